package probes

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"strings"
	"testing"
	"testing/quick"

	"golang.zx2c4.com/wireguard/device"
)

func TestSizeIsSmall(t *testing.T) {
	if Size >= 100 {
		t.Fatalf("Size = %d, want well under 100", Size)
	}
	if Size != headerLen+macLen || offMAC != headerLen || offTime+8 != headerLen {
		t.Fatal("layout constants disagree")
	}
}

func TestMarshalParseRoundTrip(t *testing.T) {
	kr := testKeyring(t, 7)
	for _, p := range []Packet{
		{Kind: KindRequest, Path: 1, Seq: 1, Timestamp: 0},
		{Kind: KindReply, Path: 42, Seq: 12345, Timestamp: 987654321},
		{Kind: KindRequest, Path: math.MaxUint32, Seq: math.MaxUint64, Timestamp: math.MaxUint64},
		{Kind: KindReply, KeyID: 99 /* ignored */, Path: 0, Seq: 0},
	} {
		b := mustMarshal(t, p, kr)
		if len(b) != Size {
			t.Fatalf("len = %d, want %d", len(b), Size)
		}
		if !IsProbe(b) {
			t.Errorf("IsProbe(%x) = false", b)
		}
		got, err := Parse(b, kr)
		if err != nil {
			t.Fatalf("Parse(Marshal(%+v)): %v", p, err)
		}
		want := p
		want.KeyID = 7
		if got != want {
			t.Errorf("Parse(Marshal(%+v)) = %+v, want %+v", p, got, want)
		}
	}
}

func TestMarshalAppends(t *testing.T) {
	kr := testKeyring(t, 1)
	prefix := []byte("hdr")
	b, err := Marshal(prefix, Packet{Kind: KindRequest, Path: 1, Seq: 2}, kr)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, prefix) || len(b) != len(prefix)+Size {
		t.Fatalf("Marshal did not append: %q", b)
	}
	if _, err := Parse(b[len(prefix):], kr); err != nil {
		t.Fatal(err)
	}
}

func TestMarshalErrors(t *testing.T) {
	kr := testKeyring(t, 1)
	for _, tc := range []struct {
		name string
		p    Packet
		kr   *Keyring
		want error
	}{
		{"kind 0", Packet{}, kr, ErrKind},
		{"kind 3", Packet{Kind: 3}, kr, ErrKind},
		{"nil keyring", Packet{Kind: KindRequest}, nil, ErrNoKey},
		{"empty keyring", Packet{Kind: KindRequest}, new(Keyring), ErrNoKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := Marshal([]byte("x"), tc.p, tc.kr)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if string(b) != "x" {
				t.Fatalf("dst changed on error: %q", b)
			}
		})
	}
}

// TestParseEveryTruncation cuts a valid probe at every length, and extends
// it, and checks each is refused with the right error.
func TestParseEveryTruncation(t *testing.T) {
	kr := testKeyring(t, 1)
	b := mustMarshal(t, Packet{Kind: KindRequest, Path: 3, Seq: 4, Timestamp: 5}, kr)
	for n := 0; n < Size; n++ {
		_, err := Parse(b[:n], kr)
		var pe *ParseError
		if !errors.As(err, &pe) || !errors.Is(err, ErrTruncated) {
			t.Fatalf("Parse(%d bytes) = %v, want ErrTruncated", n, err)
		}
		if pe.Len != n || pe.Field != "length" {
			t.Errorf("Parse(%d bytes): %+v", n, pe)
		}
	}
	for extra := 1; extra <= 64; extra++ {
		long := append(bytes.Clone(b), make([]byte, extra)...)
		if _, err := Parse(long, kr); !errors.Is(err, ErrTooLong) {
			t.Fatalf("Parse(%d bytes) = %v, want ErrTooLong", len(long), err)
		}
	}
}

func TestParseFieldErrors(t *testing.T) {
	kr := testKeyring(t, 1)
	valid := mustMarshal(t, Packet{Kind: KindRequest, Path: 3, Seq: 4, Timestamp: 5}, kr)
	type edit func(b []byte) []byte
	set := func(off int, v byte) edit { return func(b []byte) []byte { b[off] = v; return b } }
	tests := []struct {
		name   string
		edit   edit
		want   error
		field  string
		detail string
	}{
		{"type byte 1 (WireGuard)", set(0, 1), ErrNotProbe, "magic", ""},
		{"magic byte 1", set(1, 0), ErrNotProbe, "magic", ""},
		{"magic byte 3", set(3, 'p'), ErrNotProbe, "magic", ""},
		{"short non-probe", func(b []byte) []byte { return []byte{4, 0} }, ErrNotProbe, "magic", ""},
		{"version 0", set(offVersion, 0), ErrVersion, "version", "got 0, want 1"},
		{"version 2", set(offVersion, 2), ErrVersion, "version", "got 2, want 1"},
		{"version 2 short", func(b []byte) []byte { b[offVersion] = 2; return b[:20] }, ErrVersion, "version", ""},
		{"version 2 long", func(b []byte) []byte { b[offVersion] = 2; return append(b, 0) }, ErrVersion, "version", ""},
		{"kind 0", set(offKind, 0), ErrKind, "kind", "got 0, want 1 or 2"},
		{"kind 3", set(offKind, 3), ErrKind, "kind", ""},
		{"reserved", set(offRsvd+1, 1), ErrReserved, "reserved", "got 0x0001"},
		{"unknown key", set(offKeyID+3, 2), ErrUnknownKey, "key id", "key 2"},
		{"path changed", set(offPathID, 9), ErrBadMAC, "mac", "key 1"},
		{"seq changed", set(offSeq+7, 9), ErrBadMAC, "mac", ""},
		{"timestamp changed", set(offTime, 9), ErrBadMAC, "mac", ""},
		{"kind flipped to reply", set(offKind, byte(KindReply)), ErrBadMAC, "mac", ""},
		{"mac changed", func(b []byte) []byte { b[Size-1] ^= 1; return b }, ErrBadMAC, "mac", ""},
		{"mac zeroed", func(b []byte) []byte { clear(b[offMAC:]); return b }, ErrBadMAC, "mac", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.edit(bytes.Clone(valid))
			_, err := Parse(b, kr)
			var pe *ParseError
			if !errors.As(err, &pe) || !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if pe.Field != tc.field {
				t.Errorf("field = %q, want %q", pe.Field, tc.field)
			}
			if tc.detail != "" && pe.Detail != tc.detail {
				t.Errorf("detail = %q, want %q", pe.Detail, tc.detail)
			}
		})
	}
}

// TestParseEveryBitFlip flips each bit of a valid probe: each must be
// refused, since every byte is either checked or covered by the MAC.
func TestParseEveryBitFlip(t *testing.T) {
	kr := testKeyring(t, 1)
	valid := mustMarshal(t, Packet{Kind: KindReply, Path: 3, Seq: 4, Timestamp: 5}, kr)
	for i := range valid {
		for bit := range 8 {
			b := bytes.Clone(valid)
			b[i] ^= 1 << bit
			if p, err := Parse(b, kr); err == nil {
				t.Fatalf("flip byte %d bit %d: accepted as %+v", i, bit, p)
			}
		}
	}
}

func TestParseErrorMessage(t *testing.T) {
	kr := testKeyring(t, 1)
	b := mustMarshal(t, Packet{Kind: KindRequest}, kr)
	b[offVersion] = 2
	_, err := Parse(b, kr)
	want := "probe packet (48 bytes): version at offset 4: unsupported version (got 2, want 1)"
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v, want %q", err, want)
	}
	_, err = Parse(b[:10], kr)
	if err == nil || !strings.Contains(err.Error(), "(10 bytes)") {
		t.Fatalf("err = %v", err)
	}
}

// wireGuardTypes are the message types of WireGuard, with their sizes.
var wireGuardTypes = []struct {
	typ  uint32
	size int
}{
	{device.MessageInitiationType, device.MessageInitiationSize},
	{device.MessageResponseType, device.MessageResponseSize},
	{device.MessageCookieReplyType, device.MessageCookieReplySize},
	{device.MessageTransportType, device.MessageTransportSize},
	{device.MessageTransportType, 1420}, // a full data packet
}

func TestIsProbeNeverWireGuard(t *testing.T) {
	kr := testKeyring(t, 1)
	r := seeded(1)
	for _, wg := range wireGuardTypes {
		for range 1000 {
			b := make([]byte, wg.size)
			for i := range b {
				b[i] = byte(r.Uint32())
			}
			binary.LittleEndian.PutUint32(b, wg.typ)
			if IsProbe(b) {
				t.Fatalf("IsProbe(WireGuard type %d, %d bytes) = true", wg.typ, wg.size)
			}
			if _, err := Parse(b, kr); !errors.Is(err, ErrNotProbe) {
				t.Fatalf("Parse(WireGuard type %d) = %v, want ErrNotProbe", wg.typ, err)
			}
		}
	}
	// Whatever the type, a WireGuard header has three zero bytes after it.
	prop := func(first byte, rest []byte) bool {
		b := append([]byte{first, 0, 0, 0}, rest...)
		return !IsProbe(b)
	}
	if err := quick.Check(prop, &quick.Config{MaxCount: 5000}); err != nil {
		t.Fatal(err)
	}
}

func TestIsProbe(t *testing.T) {
	kr := testKeyring(t, 1)
	valid := mustMarshal(t, Packet{Kind: KindRequest}, kr)
	for n := 0; n < 4; n++ {
		if IsProbe(valid[:n]) {
			t.Errorf("IsProbe(%d bytes) = true", n)
		}
	}
	// IsProbe looks at the magic only, so a probe of a future version (or a
	// damaged one) still reaches Parse, which says what is wrong.
	for n := 4; n <= Size; n++ {
		if !IsProbe(valid[:n]) {
			t.Errorf("IsProbe(%d-byte prefix) = false", n)
		}
	}
}

func TestParseAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under the race detector")
	}
	kr := testKeyring(t, 1)
	b := mustMarshal(t, Packet{Kind: KindRequest, Seq: 1}, kr)
	buf := make([]byte, 0, Size)
	if n := testing.AllocsPerRun(100, func() {
		if _, err := Parse(b, kr); err != nil {
			t.Fatal(err)
		}
		if _, err := Marshal(buf[:0], Packet{Kind: KindReply, Seq: 1}, kr); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("Parse+Marshal allocate %v times, want 0", n)
	}
}

func TestKindString(t *testing.T) {
	for k, want := range map[Kind]string{KindRequest: "request", KindReply: "reply", 9: "kind(9)"} {
		if got := k.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", k, got, want)
		}
	}
}
