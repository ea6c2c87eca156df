package probes

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"sync"
	"sync/atomic"
)

// KeyLen is the length in bytes of a probe key's secret.
const KeyLen = 32

// MaxAccepted is how many keys a Keyring accepts besides its current one:
// the previous key and the next one during a rotation.
const MaxAccepted = 2

// KeyID names a probe key. The controller assigns ids; an id must never be
// reused for a different secret while either may still be in use.
type KeyID uint32

// Key is a probe key: an id and a 32-byte secret shared by the appliances
// of a tenant. The zero value is "no key". Key has no method that formats
// the secret by accident: String prints the id only.
type Key struct {
	id     KeyID
	secret [KeyLen]byte
}

// ErrKeyFormat is wrapped by the errors of NewKey and ParseKey.
var ErrKeyFormat = errors.New("not a probe key")

// NewKey returns the key with the given id and secret, which must be KeyLen
// bytes and not all zero.
func NewKey(id KeyID, secret []byte) (Key, error) {
	if len(secret) != KeyLen {
		return Key{}, fmt.Errorf("%w: want %d bytes, got %d", ErrKeyFormat, KeyLen, len(secret))
	}
	k := Key{id: id, secret: [KeyLen]byte(secret)}
	if k.IsZero() {
		return Key{}, fmt.Errorf("%w: all-zero secret", ErrKeyFormat)
	}
	return k, nil
}

// GenerateKey returns a new key with a secret from crypto/rand.
func GenerateKey(id KeyID) (Key, error) {
	k := Key{id: id}
	if _, err := rand.Read(k.secret[:]); err != nil {
		return Key{}, fmt.Errorf("probes: reading random bytes: %w", err)
	}
	return k, nil
}

// ParseKey returns the key with the given id and a secret in standard
// base64, the form Raw's bytes take in a netmap.
func ParseKey(id KeyID, secret string) (Key, error) {
	if want := base64.StdEncoding.EncodedLen(KeyLen); len(secret) != want {
		return Key{}, fmt.Errorf("%w: want %d base64 characters, got %d", ErrKeyFormat, want, len(secret))
	}
	b, err := base64.StdEncoding.DecodeString(secret)
	if err != nil {
		return Key{}, fmt.Errorf("%w: invalid base64", ErrKeyFormat)
	}
	return NewKey(id, b)
}

// ID returns the key's id.
func (k Key) ID() KeyID { return k.id }

// IsZero reports whether k is the zero (absent) key.
func (k Key) IsZero() bool { return k.secret == [KeyLen]byte{} }

// Raw returns the secret, for the controller to distribute. Do not log it.
func (k Key) Raw() [KeyLen]byte { return k.secret }

// String names the key without its secret.
func (k Key) String() string {
	if k.IsZero() {
		return "probe key (none)"
	}
	return fmt.Sprintf("probe key %d", k.id)
}

// A Keyring holds the keys an appliance uses for probes: the current key,
// which signs every request it sends, and up to MaxAccepted more that it
// accepts besides the current one. A reflector answers with the key that
// authenticated the request, so a sender only ever needs the key it used.
//
// Rotation without a gap: the controller first distributes the new key as
// accepted, then, once every appliance has it, as current with the old key
// accepted, and finally drops the old key. Distributing it as current
// straight away also works; requests signed with it are then refused by
// appliances that do not have it yet, until they get it.
//
// The zero value holds no key. A Keyring is safe for concurrent use; Set
// replaces its keys atomically.
type Keyring struct {
	set atomic.Pointer[keySet]
}

type keySet struct {
	keys []*macKey // the current key first
}

// NewKeyring returns a keyring holding the given keys; see Set.
func NewKeyring(current Key, accepted ...Key) (*Keyring, error) {
	r := new(Keyring)
	if err := r.Set(current, accepted...); err != nil {
		return nil, err
	}
	return r, nil
}

// Set makes current the key that signs requests and accepted the other keys
// that verify packets. current must not be zero; accepted holds at most
// MaxAccepted keys, and no two keys may share an id with different secrets.
// On error the keyring is unchanged.
func (r *Keyring) Set(current Key, accepted ...Key) error {
	if current.IsZero() {
		return errors.New("probes: keyring: zero current key")
	}
	if len(accepted) > MaxAccepted {
		return fmt.Errorf("probes: keyring: %d accepted keys, at most %d", len(accepted), MaxAccepted)
	}
	old := r.set.Load()
	next := &keySet{keys: make([]*macKey, 0, 1+len(accepted))}
	for i, k := range append([]Key{current}, accepted...) {
		if k.IsZero() {
			return fmt.Errorf("probes: keyring: accepted key %d is zero", i-1)
		}
		if m := next.find(k.id); m != nil {
			if m.secret != k.secret {
				return fmt.Errorf("probes: keyring: two secrets for key id %d", k.id)
			}
			continue
		}
		// Keep the MAC state of unchanged keys.
		if m := old.find(k.id); m != nil && m.secret == k.secret {
			next.keys = append(next.keys, m)
			continue
		}
		next.keys = append(next.keys, newMACKey(k))
	}
	r.set.Store(next)
	return nil
}

// Current returns the id of the key that signs requests; ok is false if the
// keyring holds no key.
func (r *Keyring) Current() (id KeyID, ok bool) {
	if k := r.current(); k != nil {
		return k.id, true
	}
	return 0, false
}

// IDs returns the ids of every key the keyring accepts, the current first.
func (r *Keyring) IDs() []KeyID {
	if r == nil {
		return nil
	}
	s := r.set.Load()
	if s == nil {
		return nil
	}
	ids := make([]KeyID, len(s.keys))
	for i, k := range s.keys {
		ids[i] = k.id
	}
	return ids
}

func (r *Keyring) current() *macKey {
	if r == nil {
		return nil
	}
	if s := r.set.Load(); s != nil {
		return s.keys[0]
	}
	return nil
}

func (r *Keyring) lookup(id KeyID) *macKey {
	if r == nil {
		return nil
	}
	return r.set.Load().find(id)
}

func (s *keySet) find(id KeyID) *macKey {
	if s == nil {
		return nil
	}
	for _, k := range s.keys {
		if k.id == id {
			return k
		}
	}
	return nil
}

// macKey is a key with a pool of HMAC states keyed with it, so that a MAC
// costs neither an allocation nor the key schedule.
type macKey struct {
	id     KeyID
	secret [KeyLen]byte
	pool   sync.Pool // of *macState
}

type macState struct {
	h   hash.Hash
	sum [sha256.Size]byte
}

func newMACKey(k Key) *macKey {
	m := &macKey{id: k.id, secret: k.secret}
	m.pool.New = func() any { return &macState{h: hmac.New(sha256.New, m.secret[:])} }
	return m
}

// sum writes the truncated MAC of msg to dst, which is macLen bytes.
func (m *macKey) sum(dst, msg []byte) {
	s := m.pool.Get().(*macState)
	s.h.Reset()
	s.h.Write(msg)
	copy(dst, s.h.Sum(s.sum[:0])[:macLen])
	m.pool.Put(s)
}

// verify reports, in constant time, whether mac is the MAC of msg.
func (m *macKey) verify(mac, msg []byte) bool {
	var want [macLen]byte
	m.sum(want[:], msg)
	return hmac.Equal(mac, want[:])
}
