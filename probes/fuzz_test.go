package probes

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

// FuzzParse checks that Parse and Reflect never panic, that every refusal is
// a *ParseError naming the input's length, that anything accepted is a
// probe of exactly Size bytes in its one canonical encoding, and that
// Reflect answers exactly the accepted requests. The seed corpus is in
// testdata/fuzz/FuzzParse: probes signed with key 1 (current) and key 2
// (accepted) of the test keyring, damaged probes and WireGuard headers.
func FuzzParse(f *testing.F) {
	kr := testKeyring(f, 1, 2)
	signWith := map[KeyID]*Keyring{1: testKeyring(f, 1), 2: testKeyring(f, 2)}
	refl := NewReflector(kr)
	f.Add(mustMarshal(f, Packet{Kind: KindRequest, Path: 1, Seq: 1, Timestamp: 1}, kr))
	f.Add([]byte{4, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		in := bytes.Clone(b)
		p, err := Parse(b, kr)
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) || pe.Len != len(b) || pe.Err == nil || pe.Error() == "" {
				t.Fatalf("Parse(%x): error %#v", b, err)
			}
			if !IsProbe(b) && len(b) >= 4 && !errors.Is(err, ErrNotProbe) {
				t.Fatalf("Parse(%x) of a non-probe: %v", b, err)
			}
		} else {
			if !IsProbe(b) || len(b) != Size {
				t.Fatalf("Parse accepted %x", b)
			}
			again, err := Marshal(nil, p, signWith[p.KeyID])
			if err != nil || !bytes.Equal(again, b) {
				t.Fatalf("Parse(%x) = %+v, which marshals to %x (%v)", b, p, again, err)
			}
		}
		rep, rerr := refl.Reflect(b)
		if wantOK := err == nil && p.Kind == KindRequest; (rerr == nil) != wantOK {
			t.Fatalf("Reflect(%x) = %v, Parse = %+v, %v", b, rerr, p, err)
		}
		if rerr == nil {
			q, err := Parse(rep, kr)
			if err != nil || q != p.Reply() {
				t.Fatalf("reply %+v, %v; want %+v", q, err, p.Reply())
			}
		}
		if !bytes.Equal(b, in) {
			t.Fatal("input modified")
		}
		// Whatever header passes the structural checks, signed properly it
		// round-trips.
		if h, err := parseHeader(b); err == nil {
			h.KeyID = 1
			signed, err := Marshal(nil, h, signWith[1])
			if err != nil {
				t.Fatal(err)
			}
			if q, err := Parse(signed, kr); err != nil || q != h {
				t.Fatalf("header %+v: signed %x parses as %+v, %v", h, signed, q, err)
			}
			if !bytes.Equal(signed[:offKeyID], b[:offKeyID]) || !bytes.Equal(signed[offPathID:offMAC], b[offPathID:offMAC]) {
				t.Fatalf("signing %x changed the header to %x", b, signed)
			}
		}
		if len(b) >= 4 && binary.LittleEndian.Uint32(b) >= 1 && binary.LittleEndian.Uint32(b) <= 4 && IsProbe(b) {
			t.Fatalf("IsProbe true for a WireGuard header %x", b[:4])
		}
	})
}
