package probes

import (
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
)

func TestNewKey(t *testing.T) {
	for _, tc := range []struct {
		name   string
		secret []byte
		ok     bool
	}{
		{"32 bytes", make32(1), true},
		{"short", make([]byte, 31), false},
		{"long", make([]byte, 33), false},
		{"nil", nil, false},
		{"all zero", make([]byte, 32), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := NewKey(5, tc.secret)
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrKeyFormat) {
				t.Errorf("err = %v, want ErrKeyFormat", err)
			}
			if tc.ok && (k.ID() != 5 || k.Raw() != [KeyLen]byte(tc.secret)) {
				t.Errorf("key = %v", k)
			}
		})
	}
}

func make32(v byte) []byte {
	b := make([]byte, 32)
	for i := range b {
		b[i] = v + byte(i)
	}
	return b
}

func TestParseKey(t *testing.T) {
	k := testKey(3)
	raw := k.Raw()
	s := base64.StdEncoding.EncodeToString(raw[:])
	got, err := ParseKey(3, s)
	if err != nil || got != k {
		t.Fatalf("ParseKey(%q) = %v, %v", s, got, err)
	}
	for _, bad := range []string{"", s[:43], s + "=", strings.Repeat("!", 44), base64.StdEncoding.EncodeToString(make([]byte, 32))} {
		if _, err := ParseKey(3, bad); !errors.Is(err, ErrKeyFormat) {
			t.Errorf("ParseKey(%q) = %v, want ErrKeyFormat", bad, err)
		}
	}
}

func TestGenerateKey(t *testing.T) {
	a, err := GenerateKey(1)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := GenerateKey(1)
	if a.IsZero() || a == b {
		t.Fatal("GenerateKey returned a zero or repeated key")
	}
}

func TestKeyStringHidesSecret(t *testing.T) {
	k := testKey(9)
	raw := k.Raw()
	for _, s := range []string{k.String(), fmt.Sprint(k), fmt.Sprintf("%v %s", k, k)} {
		if strings.Contains(s, base64.StdEncoding.EncodeToString(raw[:])) || strings.Contains(s, fmt.Sprintf("%x", raw[:4])) {
			t.Fatalf("%q shows the secret", s)
		}
	}
	if got := k.String(); got != "probe key 9" {
		t.Errorf("String() = %q", got)
	}
	if got := (Key{}).String(); got != "probe key (none)" {
		t.Errorf("zero String() = %q", got)
	}
}

func TestKeyringSet(t *testing.T) {
	other := func(id KeyID) Key { k, _ := NewKey(id, make32(200)); return k }
	for _, tc := range []struct {
		name     string
		current  Key
		accepted []Key
		wantIDs  []KeyID
		wantErr  string
	}{
		{"current only", testKey(1), nil, []KeyID{1}, ""},
		{"current and previous", testKey(2), []Key{testKey(1)}, []KeyID{2, 1}, ""},
		{"previous and next", testKey(2), []Key{testKey(1), testKey(3)}, []KeyID{2, 1, 3}, ""},
		{"same key twice", testKey(2), []Key{testKey(2)}, []KeyID{2}, ""},
		{"zero current", Key{}, nil, nil, "zero current key"},
		{"zero accepted", testKey(1), []Key{{}}, nil, "accepted key 0 is zero"},
		{"too many", testKey(1), []Key{testKey(2), testKey(3), testKey(4)}, nil, "at most 2"},
		{"id clash", testKey(1), []Key{other(1)}, nil, "two secrets for key id 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kr := testKeyring(t, 9)
			err := kr.Set(tc.current, tc.accepted...)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				if ids := kr.IDs(); !slices.Equal(ids, []KeyID{9}) {
					t.Fatalf("keyring changed on error: %v", ids)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ids := kr.IDs(); !slices.Equal(ids, tc.wantIDs) {
				t.Errorf("IDs() = %v, want %v", ids, tc.wantIDs)
			}
			if id, ok := kr.Current(); !ok || id != tc.current.ID() {
				t.Errorf("Current() = %v, %v", id, ok)
			}
		})
	}
}

func TestKeyringZero(t *testing.T) {
	var kr Keyring
	if _, ok := kr.Current(); ok {
		t.Error("zero keyring has a current key")
	}
	if ids := kr.IDs(); ids != nil {
		t.Errorf("IDs() = %v", ids)
	}
	b := mustMarshal(t, Packet{Kind: KindRequest}, testKeyring(t, 1))
	if _, err := Parse(b, &kr); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("Parse with zero keyring = %v", err)
	}
	if _, err := Parse(b, nil); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("Parse with nil keyring = %v", err)
	}
}

func TestKeyringKeepsUnchangedKeys(t *testing.T) {
	kr := testKeyring(t, 1)
	before := kr.lookup(1)
	if err := kr.Set(testKey(2), testKey(1)); err != nil {
		t.Fatal(err)
	}
	if kr.lookup(1) != before {
		t.Error("Set rebuilt the MAC state of an unchanged key")
	}
}

// TestRotation walks a rotation from key 1 to key 2 between a sender and a
// reflector that get the new keys at different times, and checks that no
// probe is refused at any step.
func TestRotation(t *testing.T) {
	sender := testKeyring(t, 1)
	far := testKeyring(t, 1)
	refl := NewReflector(far)
	roundTrip := func(step string) {
		t.Helper()
		req := mustMarshal(t, Packet{Kind: KindRequest, Path: 1, Seq: 1}, sender)
		rep, err := refl.Reflect(req)
		if err != nil {
			t.Fatalf("%s: reflect: %v", step, err)
		}
		p, err := Parse(rep, sender)
		if err != nil {
			t.Fatalf("%s: parse reply: %v", step, err)
		}
		if cur, _ := sender.Current(); p.KeyID != cur {
			t.Fatalf("%s: reply signed with key %d, want the request's %d", step, p.KeyID, cur)
		}
	}
	roundTrip("before")
	// 1. The new key is distributed as accepted only, in any order.
	must(t, far.Set(testKey(1), testKey(2)))
	roundTrip("far end accepts 2")
	must(t, sender.Set(testKey(1), testKey(2)))
	roundTrip("both accept 2")
	// 2. The new key becomes current, the old one stays accepted.
	must(t, sender.Set(testKey(2), testKey(1)))
	roundTrip("sender signs with 2")
	must(t, far.Set(testKey(2), testKey(1)))
	roundTrip("both sign with 2")
	// 3. The old key is dropped.
	must(t, far.Set(testKey(2)))
	must(t, sender.Set(testKey(2)))
	roundTrip("after")
	// A sender still on the old key is now refused.
	old := mustMarshal(t, Packet{Kind: KindRequest}, testKeyring(t, 1))
	if _, err := refl.Reflect(old); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("old key after rotation: %v", err)
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestKeyringConcurrent parses and marshals while the keys change; run it
// with -race.
func TestKeyringConcurrent(t *testing.T) {
	kr := testKeyring(t, 1, 2)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 500 {
				b, err := Marshal(nil, Packet{Kind: KindRequest, Seq: uint64(i)}, kr)
				if err != nil {
					t.Error(err)
					return
				}
				if _, err := Parse(b, kr); err != nil && !errors.Is(err, ErrUnknownKey) {
					t.Errorf("goroutine %d: %v", g, err)
					return
				}
			}
		})
	}
	for i := range 200 {
		if i%2 == 0 {
			must(t, kr.Set(testKey(2), testKey(1)))
		} else {
			must(t, kr.Set(testKey(1), testKey(2)))
		}
	}
	wg.Wait()
}
