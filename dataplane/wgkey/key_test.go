package wgkey

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"testing"
)

// RFC 7748 section 6.1: Alice's key pair.
const (
	alicePriv = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
	alicePub  = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
)

func TestPublicMatchesRFC7748(t *testing.T) {
	raw, _ := hex.DecodeString(alicePriv)
	var p PrivateKey
	if err := p.UnmarshalText([]byte(base64.StdEncoding.EncodeToString(raw))); err != nil {
		t.Fatal(err)
	}
	if got := p.Public().HexString(); got != alicePub {
		t.Fatalf("public key %s, want %s", got, alicePub)
	}
}

func TestRoundTripAndErrors(t *testing.T) {
	p, err := NewPrivate()
	if err != nil {
		t.Fatal(err)
	}
	pub := p.Public()
	back, err := ParsePublic(pub.String())
	if err != nil || back != pub {
		t.Fatalf("round trip: %v %v", back, err)
	}
	text, _ := p.MarshalText()
	var p2 PrivateKey
	if err := p2.UnmarshalText(text); err != nil || p2.Public() != pub {
		t.Fatalf("private round trip: %v", err)
	}
	for _, bad := range []string{"", "short", "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!=", pub.String()[:43]} {
		if _, err := ParsePublic(bad); !errors.Is(err, ErrKeyFormat) {
			t.Errorf("ParsePublic(%q) = %v, want ErrKeyFormat", bad, err)
		}
	}
	if (PublicKey{}).IsZero() != true || pub.IsZero() {
		t.Error("IsZero wrong")
	}
}
