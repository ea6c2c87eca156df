package api

import (
	"errors"
	"testing"

	"github.com/causeway-net/causeway/controller/netmap"
	"github.com/causeway-net/causeway/controller/state"
)

// The request decoders face the network: whatever the bytes, they must
// return a problem or a state.Error (never panic, never another error),
// and what they accept must be well-formed.

func checkDecodeErr(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		return
	}
	var p *Problem
	var se *state.Error
	if !errors.As(err, &p) && !errors.As(err, &se) {
		t.Fatalf("decoder returned %T: %v", err, err)
	}
	if p != nil && p.Status != 400 {
		t.Fatalf("decoder problem with status %d", p.Status)
	}
	if se != nil && (se.Code != state.CodeInvalid || len(se.Fields) == 0) {
		t.Fatalf("validation error without fields: %v", se)
	}
}

func FuzzDecodeCreateSite(f *testing.F) {
	f.Add([]byte(`{"name":"hq","kind":"office","lan_prefixes":["10.1.0.0/24","fd00::/64"]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		in, err := decodeCreateSite(data)
		checkDecodeErr(t, err)
		if err == nil {
			for _, p := range in.LANPrefixes {
				if _, err := netmap.ParseLANPrefix(p.String()); err != nil {
					t.Fatalf("accepted %s: %v", p, err)
				}
			}
		}
	})
}

func FuzzDecodeUpdateSite(f *testing.F) {
	f.Add([]byte(`{"lan_prefixes":["10.1.0.0/24"],"kind":"home"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		up, err := decodeUpdateSite(data)
		checkDecodeErr(t, err)
		if err == nil && up.LANPrefixes != nil {
			for _, p := range *up.LANPrefixes {
				if p.Masked() != p || p.Bits() == 0 {
					t.Fatalf("accepted %s", p)
				}
			}
		}
	})
}

func FuzzDecodeEnroll(f *testing.F) {
	f.Add([]byte(`{"token":"cwe_x","public_key":"AgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","endpoints":["198.18.0.1:51820"]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		in, err := decodeEnroll(data)
		checkDecodeErr(t, err)
		if err == nil {
			if in.Token == "" || in.PublicKey.IsZero() {
				t.Fatalf("accepted %+v", in)
			}
			for _, ep := range in.Endpoints {
				if ep.Port() == 0 || !ep.Addr().IsGlobalUnicast() {
					t.Fatalf("accepted endpoint %s", ep)
				}
			}
		}
	})
}

func FuzzDecodeCreateEnrollmentToken(f *testing.F) {
	f.Add([]byte(`{"site":"hq","ttl":"1h","description":"x"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		in, err := decodeCreateEnrollmentToken(data)
		checkDecodeErr(t, err)
		if err == nil && in.TTL < 0 {
			t.Fatalf("accepted ttl %s", in.TTL)
		}
	})
}

func FuzzDecodeUpdateAppliance(f *testing.F) {
	f.Add([]byte(`{"endpoints":["[2001:db8::1]:51820"]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, err := decodeUpdateAppliance(data)
		checkDecodeErr(t, err)
	})
}

func FuzzDecodeCreateTenant(f *testing.F) {
	f.Add([]byte(`{"name":"acme"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, err := decodeCreateTenant(data)
		checkDecodeErr(t, err)
	})
}

func FuzzDecodeCreateAPIToken(f *testing.F) {
	f.Add([]byte(`{"description":"ci","ttl":"720h"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		in, err := decodeCreateAPIToken(data)
		checkDecodeErr(t, err)
		if err == nil && in.TTL < 0 {
			t.Fatalf("accepted ttl %s", in.TTL)
		}
	})
}

func FuzzDecodeSLA(f *testing.F) {
	f.Add([]byte(`{"max_loss_percent":2,"max_rtt_ms":150,"max_jitter_ms":30}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, err := decodeSLA(data)
		checkDecodeErr(t, err)
	})
}

func FuzzDecodePathReport(f *testing.F) {
	f.Add([]byte(`{"points":[{"peer":"vpc-1","uplink":"wan1","remote":"198.18.0.2:51820","start":"2026-01-01T00:00:00Z","end":"2026-01-01T00:00:10Z","sent":50,"received":49,"lost":1,"rtt_min_us":9000,"rtt_mean_us":10000,"rtt_p50_us":10000,"rtt_p99_us":14000,"rtt_max_us":15000,"jitter_us":800}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		rs, err := decodePathReport(data)
		checkDecodeErr(t, err)
		if err == nil {
			for _, r := range rs {
				if !r.End.After(r.Start) || !r.Remote.IsValid() || r.Peer == "" || r.Sent < 0 || r.RTTP99 < 0 {
					t.Fatalf("accepted a malformed point %+v", r)
				}
			}
		}
	})
}
