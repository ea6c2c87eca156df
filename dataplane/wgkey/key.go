// Package wgkey holds typed WireGuard (Curve25519) keys.
//
// Keys are fixed-size arrays behind unexported fields so that a private key
// cannot be confused with a public one, compared by accident against a byte
// slice, or printed: PrivateKey deliberately has no String method.
package wgkey

import (
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
)

// Len is the length in bytes of every WireGuard key.
const Len = 32

// PublicKey is a Curve25519 public key. The zero value is "no key".
type PublicKey struct{ k [Len]byte }

// PrivateKey is a Curve25519 private key. The zero value is "no key".
type PrivateKey struct{ k [Len]byte }

// NewPrivate generates a fresh private key from crypto/rand.
func NewPrivate() (PrivateKey, error) {
	var p PrivateKey
	if _, err := rand.Read(p.k[:]); err != nil {
		return PrivateKey{}, fmt.Errorf("wgkey: reading random bytes: %w", err)
	}
	clamp(&p.k)
	return p, nil
}

func clamp(k *[Len]byte) {
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
}

// IsZero reports whether p is the zero (absent) key.
func (p PrivateKey) IsZero() bool { return p.k == [Len]byte{} }

// Public derives the public key.
func (p PrivateKey) Public() PublicKey {
	priv, err := ecdh.X25519().NewPrivateKey(p.k[:])
	if err != nil {
		// Only possible for a wrong length, which the array type rules out.
		panic("wgkey: " + err.Error())
	}
	var pub PublicKey
	copy(pub.k[:], priv.PublicKey().Bytes())
	return pub
}

// Raw returns the key bytes. It exists for the WireGuard device
// configuration; do not log the result.
func (p PrivateKey) Raw() [Len]byte { return p.k }

// HexString is the lower-case hex form used by the WireGuard UAPI.
func (p PrivateKey) HexString() string { return hex.EncodeToString(p.k[:]) }

// MarshalText encodes the key as standard base64 (the form wg(8) uses).
// It is used only to write the key file; the key never appears in logs.
func (p PrivateKey) MarshalText() ([]byte, error) {
	return []byte(base64.StdEncoding.EncodeToString(p.k[:])), nil
}

// UnmarshalText parses a base64 private key.
func (p *PrivateKey) UnmarshalText(b []byte) error {
	k, err := parse(string(b))
	if err != nil {
		return err
	}
	p.k = k
	return nil
}

// ParsePublic parses the base64 form of a public key, as printed by wg(8).
func ParsePublic(s string) (PublicKey, error) {
	k, err := parse(s)
	if err != nil {
		return PublicKey{}, err
	}
	return PublicKey{k}, nil
}

// IsZero reports whether k is the zero (absent) key.
func (k PublicKey) IsZero() bool { return k.k == [Len]byte{} }

// String is the base64 form.
func (k PublicKey) String() string { return base64.StdEncoding.EncodeToString(k.k[:]) }

// HexString is the lower-case hex form used by the WireGuard UAPI.
func (k PublicKey) HexString() string { return hex.EncodeToString(k.k[:]) }

// Raw returns the key bytes.
func (k PublicKey) Raw() [Len]byte { return k.k }

// MarshalText encodes the key as base64.
func (k PublicKey) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText parses a base64 public key.
func (k *PublicKey) UnmarshalText(b []byte) error {
	p, err := ParsePublic(string(b))
	if err != nil {
		return err
	}
	*k = p
	return nil
}

// ErrKeyFormat is wrapped by every parse error.
var ErrKeyFormat = errors.New("not a WireGuard key")

func parse(s string) ([Len]byte, error) {
	var k [Len]byte
	if len(s) != 44 {
		return k, fmt.Errorf("%w: want 44 base64 characters, got %d", ErrKeyFormat, len(s))
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) != Len {
		return k, fmt.Errorf("%w: invalid base64", ErrKeyFormat)
	}
	copy(k[:], b)
	return k, nil
}
