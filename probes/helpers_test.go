package probes

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"
	"time"
)

// t0 is an arbitrary start for fake clocks.
var t0 = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

const ms = time.Millisecond

// testKey returns a fixed key whose secret is derived from id.
func testKey(id KeyID) Key {
	var s [KeyLen]byte
	for i := range s {
		s[i] = byte(int(id)*31 + i + 1)
	}
	k, err := NewKey(id, s[:])
	if err != nil {
		panic(err)
	}
	return k
}

func testKeyring(tb testing.TB, current KeyID, accepted ...KeyID) *Keyring {
	tb.Helper()
	acc := make([]Key, len(accepted))
	for i, id := range accepted {
		acc[i] = testKey(id)
	}
	kr, err := NewKeyring(testKey(current), acc...)
	if err != nil {
		tb.Fatal(err)
	}
	return kr
}

func mustMarshal(tb testing.TB, p Packet, kr *Keyring) []byte {
	tb.Helper()
	b, err := Marshal(nil, p, kr)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// seeded returns a repeatable generator.
func seeded(n uint64) *rand.Rand {
	var seed [32]byte
	binary.LittleEndian.PutUint64(seed[:], n)
	return rand.New(rand.NewChaCha8(seed))
}
