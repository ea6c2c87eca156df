package bind

import (
	"crypto/ecdh"
	"crypto/hmac"
	"crypto/subtle"
	"hash"

	"golang.org/x/crypto/blake2s"
	"golang.org/x/crypto/chacha20poly1305"

	"github.com/causeway-net/causeway/dataplane/wgkey"
)

// The first message of WireGuard's Noise_IKpsk2 handshake carries the
// initiator's static public key, encrypted to the responder's static key
// with a key derived from an ephemeral Diffie-Hellman. The responder, and
// so a bind holding the device's private key, can decrypt it; that names
// the peer of an initiation from a source the bind has never seen. This is
// the first steps of the responder's processing (the WireGuard paper,
// section 5.4.2); WireGuard repeats and completes them.
const (
	noiseConstruction = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
	wgIdentifier      = "WireGuard v1 zx2c4 Jason@zx2c4.com"
	wgLabelMAC1       = "mac1----"

	offEphemeral = 8
	offStatic    = offEphemeral + 32
	offTimestamp = offStatic + 32 + chacha20poly1305.Overhead
	offMAC1      = offTimestamp + 12 + chacha20poly1305.Overhead
)

// initiationOpener recovers the initiator's static key from a handshake
// initiation. It is immutable and safe for concurrent use.
type initiationOpener struct {
	priv      *ecdh.PrivateKey
	chainKey0 [blake2s.Size]byte // HASH(construction)
	hash0     [blake2s.Size]byte // HASH(HASH(C || identifier) || our static)
	mac1Key   [blake2s.Size]byte // HASH(label || our static)
}

func newInitiationOpener(k wgkey.PrivateKey) (*initiationOpener, error) {
	raw := k.Raw()
	priv, err := ecdh.X25519().NewPrivateKey(raw[:])
	if err != nil {
		return nil, err
	}
	pub := priv.PublicKey().Bytes()
	o := &initiationOpener{priv: priv}
	o.chainKey0 = blake2s.Sum256([]byte(noiseConstruction))
	mixHash(&o.hash0, &o.chainKey0, []byte(wgIdentifier))
	mixHash(&o.hash0, &o.hash0, pub)
	h, _ := blake2s.New256(nil)
	h.Write([]byte(wgLabelMAC1))
	h.Write(pub)
	h.Sum(o.mac1Key[:0])
	return o, nil
}

// open returns the initiator's static public key of the initiation msg, if
// its mac1 is valid for our key and the static key decrypts.
func (o *initiationOpener) open(msg []byte) (key [wgkey.Len]byte, ok bool) {
	if len(msg) != sizeInitiation {
		return key, false
	}
	// mac1 first: cheap, and it drops what was not made for our key.
	mac, _ := blake2s.New128(o.mac1Key[:])
	mac.Write(msg[:offMAC1])
	var sum [blake2s.Size]byte
	if subtle.ConstantTimeCompare(mac.Sum(sum[:0]), msg[offMAC1:offMAC1+16]) != 1 {
		return key, false
	}
	eph := msg[offEphemeral:offStatic]
	peerEph, err := ecdh.X25519().NewPublicKey(eph)
	if err != nil {
		return key, false
	}
	ss, err := o.priv.ECDH(peerEph) // fails for a low-order point
	if err != nil {
		return key, false
	}
	var hash, chainKey, aeadKey [blake2s.Size]byte
	mixHash(&hash, &o.hash0, eph)
	kdf1(&chainKey, o.chainKey0[:], eph)
	kdf2(&chainKey, &aeadKey, chainKey[:], ss)
	aead, _ := chacha20poly1305.New(aeadKey[:])
	var nonce [chacha20poly1305.NonceSize]byte
	if _, err := aead.Open(key[:0], nonce[:], msg[offStatic:offTimestamp], hash[:]); err != nil {
		return [wgkey.Len]byte{}, false
	}
	return key, true
}

func mixHash(dst, h *[blake2s.Size]byte, data []byte) {
	x, _ := blake2s.New256(nil)
	x.Write(h[:])
	x.Write(data)
	x.Sum(dst[:0])
}

func newBlake2s() hash.Hash {
	h, _ := blake2s.New256(nil)
	return h
}

func hmacSum(dst *[blake2s.Size]byte, key []byte, in ...[]byte) {
	m := hmac.New(newBlake2s, key)
	for _, b := range in {
		m.Write(b)
	}
	m.Sum(dst[:0])
}

// kdf1 and kdf2 are WireGuard's HKDF with HMAC-BLAKE2s.
func kdf1(t0 *[blake2s.Size]byte, key, input []byte) {
	var prk [blake2s.Size]byte
	hmacSum(&prk, key, input)
	hmacSum(t0, prk[:], []byte{1})
}

func kdf2(t0, t1 *[blake2s.Size]byte, key, input []byte) {
	var prk [blake2s.Size]byte
	hmacSum(&prk, key, input)
	hmacSum(t0, prk[:], []byte{1})
	hmacSum(t1, prk[:], t0[:], []byte{2})
}
