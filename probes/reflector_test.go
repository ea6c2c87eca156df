package probes

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

func TestReflect(t *testing.T) {
	kr := testKeyring(t, 4)
	r := NewReflector(kr)
	req := Packet{Kind: KindRequest, Path: 17, Seq: 99, Timestamp: 123456789}
	b := mustMarshal(t, req, kr)
	orig := bytes.Clone(b)
	rep, err := r.Reflect(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, orig) {
		t.Error("Reflect modified the request")
	}
	got, err := Parse(rep, kr)
	if err != nil {
		t.Fatal(err)
	}
	want := req.Reply()
	want.KeyID = 4
	if got != want {
		t.Errorf("reply = %+v, want %+v", got, want)
	}
	if c := r.Counters(); c != (ReflectorCounters{Reflected: 1}) {
		t.Errorf("counters = %+v", c)
	}
}

func TestReflectRefusals(t *testing.T) {
	kr := testKeyring(t, 1)
	valid := mustMarshal(t, Packet{Kind: KindRequest, Seq: 1}, kr)
	wg := make([]byte, 148)
	binary.LittleEndian.PutUint32(wg, 1)
	tests := []struct {
		name    string
		pkt     []byte
		want    error
		counted ReflectorCounters
	}{
		{"bad MAC", func() []byte { b := bytes.Clone(valid); b[Size-1] ^= 0x80; return b }(), ErrBadMAC, ReflectorCounters{BadMAC: 1}},
		{"forged seq", func() []byte { b := bytes.Clone(valid); b[offSeq] = 1; return b }(), ErrBadMAC, ReflectorCounters{BadMAC: 1}},
		{"unknown key", mustMarshal(t, Packet{Kind: KindRequest}, testKeyring(t, 2)), ErrUnknownKey, ReflectorCounters{UnknownKey: 1}},
		{"truncated", valid[:Size-1], ErrTruncated, ReflectorCounters{Malformed: 1}},
		{"WireGuard initiation", wg, ErrNotProbe, ReflectorCounters{Malformed: 1}},
		{"reply", mustMarshal(t, Packet{Kind: KindReply}, kr), ErrNotRequest, ReflectorCounters{NotRequest: 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := NewReflector(kr)
			rep, err := r.Reflect(tc.pkt)
			if !errors.Is(err, tc.want) || rep != nil {
				t.Fatalf("Reflect = %x, %v; want nil, %v", rep, err, tc.want)
			}
			if c := r.Counters(); c != tc.counted {
				t.Errorf("counters = %+v, want %+v", c, tc.counted)
			}
		})
	}
}

// TestReflectAcceptsPreviousKey: during a rotation the reflector answers
// requests signed with either key, each with the key of the request.
func TestReflectAcceptsPreviousKey(t *testing.T) {
	r := NewReflector(testKeyring(t, 2, 1))
	for _, id := range []KeyID{1, 2} {
		sender := testKeyring(t, id)
		rep, err := r.Reflect(mustMarshal(t, Packet{Kind: KindRequest}, sender))
		if err != nil {
			t.Fatalf("key %d: %v", id, err)
		}
		if p, err := Parse(rep, sender); err != nil || p.KeyID != id {
			t.Fatalf("key %d: reply %+v, %v", id, p, err)
		}
	}
}

func TestHandle(t *testing.T) {
	kr := testKeyring(t, 1)
	r := NewReflector(kr)
	req := Packet{Kind: KindRequest, KeyID: 1, Path: 5, Seq: 6, Timestamp: 7}
	rep, p, err := r.Handle(mustMarshal(t, req, kr))
	if err != nil || p != req || rep == nil {
		t.Fatalf("request: %x, %+v, %v", rep, p, err)
	}
	rep2, p, err := r.Handle(rep)
	if err != nil || rep2 != nil || p != req.Reply() {
		t.Fatalf("reply: %x, %+v, %v", rep2, p, err)
	}
	bad := bytes.Clone(rep)
	bad[offSeq] ^= 1
	if _, _, err := r.Handle(bad); !errors.Is(err, ErrBadMAC) {
		t.Fatalf("forged reply: %v", err)
	}
	if c := r.Counters(); c != (ReflectorCounters{Reflected: 1, Replies: 1, BadMAC: 1}) {
		t.Errorf("counters = %+v", c)
	}
}
