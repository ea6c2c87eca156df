package appliance

import (
	"encoding/json"
	"testing"
)

// FuzzUsageAnswer: the controller's answer to a usage report is input
// from the network. Decoding never panics, and an accepted answer has an
// acked list.
func FuzzUsageAnswer(f *testing.F) {
	for _, s := range []string{`{"acked":[1,2,3]}`, `{"acked":[]}`, `{"acked":null}`, `{}`, `{"acked":[-1]}`,
		`{"acked":[18446744073709551616]}`, `{"acked":"1"}`, `[]`, `null`, `{"acked":[1],"extra":true}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var a usageAnswer
		if err := json.Unmarshal(b, &a); err != nil {
			return
		}
		if a.Acked == nil {
			t.Fatalf("accepted %q without an acked list", b)
		}
	})
}

// FuzzUsageSegment: a segment file after a crash or damage. Indexing
// never panics; every record it keeps decodes from its line, with seqs
// strictly increasing, inside the data.
func FuzzUsageSegment(f *testing.F) {
	line := `{"seq":3,"start":"2030-01-01T00:00:00Z","end":"2030-01-01T00:00:10Z","usage":[{"meter":"overlay","peer_site":"st_b","direction":"tx","bytes":100,"packets":1}]}`
	for _, s := range []string{line + "\n", line + "\n" + line[:40], "garbage\n" + line + "\n", line + "\n" + line + "\n", "", "\n\n", line} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var last uint64
		seg, bad, torn := parseSegment(data, &last)
		if seg.size > int64(len(data)) || torn > 1 || bad < 0 {
			t.Fatalf("size %d of %d, torn %d", seg.size, len(data), torn)
		}
		var prev uint64
		for _, r := range seg.recs {
			if r.seq <= prev || r.off+r.n > seg.size || data[r.off+r.n-1] != '\n' {
				t.Fatalf("bad index entry %+v", r)
			}
			rec, err := decodeSpoolLine(data[r.off : r.off+r.n-1])
			if err != nil || rec.Seq != r.seq {
				t.Fatalf("indexed line does not decode: %v", err)
			}
			prev = r.seq
		}
		if len(seg.recs) > 0 && last != prev {
			t.Fatalf("last %d, want %d", last, prev)
		}
	})
}
