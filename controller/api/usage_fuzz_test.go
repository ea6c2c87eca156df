package api

import (
	"testing"
	"time"

	"github.com/causeway-net/causeway/controller/state"
	"github.com/causeway-net/causeway/controller/store"
)

// fuzzNow is the time the usage report fuzzer checks against: after the
// seeds' records.
var fuzzNow = time.Date(2026, 1, 1, 1, 0, 0, 0, time.UTC)

func FuzzDecodeUsageReport(f *testing.F) {
	f.Add([]byte(`{"records":[{"seq":1,"start":"2026-01-01T00:00:00Z","end":"2026-01-01T00:00:10Z","usage":[{"meter":"overlay","peer_site":"st_0123456789abcdef","direction":"tx","bytes":1500,"packets":1},{"meter":"gateway","direction":"rx","bytes":40,"packets":1}]}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		recs, err := decodeUsageReport(data, fuzzNow)
		checkDecodeErr(t, err)
		if err != nil {
			if p, ok := err.(*Problem); ok && p.Status == 400 && len(p.Errors) == 0 && p.Detail == "" {
				t.Fatalf("a problem that says nothing: %+v", p)
			}
			return
		}
		if len(recs) > state.MaxUsageRecords {
			t.Fatalf("accepted %d records", len(recs))
		}
		seqs := map[int64]bool{}
		for _, r := range recs {
			hour := r.Start.Truncate(store.UsageHour)
			if r.Seq < 0 || seqs[r.Seq] || !r.End.After(r.Start) || r.End.After(hour.Add(store.UsageHour)) || r.End.After(fuzzNow.Add(MaxUsageSkew)) {
				t.Fatalf("accepted a malformed record %+v", r)
			}
			seqs[r.Seq] = true
			type key struct{ m, p, d string }
			seen := map[key]bool{}
			for _, u := range r.Usage {
				k := key{u.Meter, u.PeerSite, u.Direction}
				if seen[k] || u.Bytes < 0 || u.Packets < 0 || u.Bytes > MaxUsageValue || (u.Direction != "tx" && u.Direction != "rx") ||
					(u.Meter == "overlay") == (u.PeerSite == "") || (u.Meter != "overlay" && u.Meter != "gateway") {
					t.Fatalf("accepted a malformed count %+v", u)
				}
				seen[k] = true
			}
		}
	})
}

func FuzzDecodeRetry(f *testing.F) {
	f.Add([]byte(`{"ids":["2b5e0f4e-0d8a-5e4c-9a57-1a7b3d5e9f01"]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ids, err := decodeRetry(data)
		checkDecodeErr(t, err)
		for _, id := range ids {
			if id == "" || len(id) > 64 {
				t.Fatalf("accepted id %q", id)
			}
		}
	})
}

func FuzzDecodeUpdateTenant(f *testing.F) {
	f.Add([]byte(`{"billing_customer":"cus_42"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, err := decodeUpdateTenant(data)
		checkDecodeErr(t, err)
	})
}
