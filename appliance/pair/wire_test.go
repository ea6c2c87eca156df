package pair

import (
	"bytes"
	"errors"
	"testing"
)

var (
	testKey  = macKey(deriveKey([]byte("0123456789abcdef-test-key"), "heartbeat v1"))
	otherKey = macKey(deriveKey([]byte("another key, same length...."), "heartbeat v1"))
)

func sampleHeartbeat() heartbeat {
	return heartbeat{Channel: ChannelWAN, Role: RoleActive, Drained: true, Reason: ReasonPreempt, Priority: 200,
		Term: 7, Boot: 1 << 40, Seq: 99, Name: "office-1-a"}
}

func TestHeartbeatRoundTrip(t *testing.T) {
	for _, h := range []heartbeat{
		sampleHeartbeat(),
		{Channel: ChannelLAN, Role: RoleStandby, LANDown: true, Name: "b", Seq: 1},
		{Channel: ChannelLAN, Role: RoleStopped, Reason: ReasonStop, Priority: 65535, Term: ^uint64(0),
			Boot: ^uint64(0), Seq: ^uint64(0), Name: string(bytes.Repeat([]byte{'a'}, MaxNameLen))},
	} {
		b := appendHeartbeat([]byte("prefix"), &h, &testKey)
		if string(b[:6]) != "prefix" {
			t.Fatal("appendHeartbeat overwrote dst")
		}
		b = b[6:]
		if len(b) != headerLen+len(h.Name)+macLen {
			t.Fatalf("%d bytes for a name of %d", len(b), len(h.Name))
		}
		got, err := parseHeartbeat(b, &testKey)
		if err != nil || got != h {
			t.Fatalf("parse(%x) = %+v, %v; want %+v", b, got, err, h)
		}
	}
}

func TestHeartbeatRefusals(t *testing.T) {
	h := sampleHeartbeat()
	good := appendHeartbeat(nil, &h, &testKey)
	resign := func(b []byte) []byte { // a damaged header with a valid MAC
		n := len(b) - macLen
		testKey.sum(b[n:], b[:n])
		return b
	}
	mod := func(off int, v byte) []byte {
		b := bytes.Clone(good)
		b[off] = v
		return resign(b)
	}
	cases := []struct {
		name  string
		b     []byte
		field string
		err   error
	}{
		{"empty", nil, "magic", errNotHeartbeat},
		{"probe", []byte{0xC5, 'C', 'W', 'P', 1}, "magic", errNotHeartbeat},
		{"magic only", good[:4], "length", errLength},
		{"version 2", mod(offVersion, 2), "version", errVersion},
		{"truncated", good[:len(good)-1], "name length", errLength},
		{"too long", append(bytes.Clone(good), 0), "name length", errLength},
		{"name length 0", mod(offNameLen, 0), "name length", errLength},
		{"other key", appendHeartbeat(nil, &h, &otherKey), "mac", errBadMAC},
		{"flipped bit", func() []byte { b := bytes.Clone(good); b[offTerm] ^= 1; return b }(), "mac", errBadMAC},
		{"channel 3", mod(offChannel, 3), "channel", errField},
		{"role 0", mod(offRole, 0), "role", errField},
		{"flags", mod(offFlags, 4), "flags", errField},
		{"reason", mod(offReason, numReasons), "reason", errField},
		{"name", mod(offName, 'A'), "name", errField},
	}
	for _, c := range cases {
		_, err := parseHeartbeat(c.b, &testKey)
		var we *wireError
		if !errors.As(err, &we) || we.Field != c.field || !errors.Is(err, c.err) || we.Len != len(c.b) {
			t.Errorf("%s: got %v, want %s: %v", c.name, err, c.field, c.err)
		}
	}
}

// FuzzParseHeartbeat checks that the decoder never panics, that every
// refusal is a *wireError, and that whatever it accepts is valid and is the
// one canonical encoding of its content. The seed corpus in
// testdata/fuzz/FuzzParseHeartbeat holds heartbeats signed with the test
// key (LAN and WAN, every role) and damaged ones.
func FuzzParseHeartbeat(f *testing.F) {
	h := sampleHeartbeat()
	f.Add(appendHeartbeat(nil, &h, &testKey))
	f.Fuzz(func(t *testing.T, b []byte) {
		in := bytes.Clone(b)
		got, err := parseHeartbeat(b, &testKey)
		if !bytes.Equal(in, b) {
			t.Fatal("input modified")
		}
		if err != nil {
			var we *wireError
			if !errors.As(err, &we) || we.Len != len(b) || we.Err == nil || we.Field == "" {
				t.Fatalf("parse(%x): error %#v", b, err)
			}
			return
		}
		if !validName(got.Name) || !got.Reason.valid() || got.Role < RoleStandby || got.Role > RoleStopped ||
			(got.Channel != ChannelLAN && got.Channel != ChannelWAN) {
			t.Fatalf("parse(%x) accepted an invalid %+v", b, got)
		}
		if again := appendHeartbeat(nil, &got, &testKey); !bytes.Equal(again, b) {
			t.Fatalf("parse(%x) = %+v, which encodes to %x", b, got, again)
		}
		if _, err := parseHeartbeat(b, &otherKey); !errors.Is(err, errBadMAC) {
			t.Fatalf("parse(%x) with another key: %v", b, err)
		}
	})
}
