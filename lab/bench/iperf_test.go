package bench

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func readTestdata(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The samples are `iperf3 -c 10.20.0.10 -t 5 -O 1 -P N -J` from
// office-1-host through the lab's Causeway overlay; the figures below are
// the end.sum_received and end.sum_sent fields of each file.
func TestParseIperf(t *testing.T) {
	for _, tc := range []struct {
		file string
		want Throughput
	}{
		{"iperf3-1stream.json", Throughput{
			Streams: 1, BitsPerSecond: 2189705957.5417137, SenderBitsPerSecond: 2191427855.459931,
			Retransmits: 0, Seconds: 5.003876, Bytes: 1369627136,
		}},
		{"iperf3-4streams.json", Throughput{
			Streams: 4, BitsPerSecond: 2760687064.43701, SenderBitsPerSecond: 2765696551.437288,
			Retransmits: 0, Seconds: 5.016496, Bytes: 1731121952,
		}},
	} {
		got, err := ParseIperf(readTestdata(t, tc.file))
		if err != nil {
			t.Errorf("%s: %v", tc.file, err)
			continue
		}
		if got != tc.want {
			t.Errorf("%s:\n got %+v\nwant %+v", tc.file, got, tc.want)
		}
	}
}

func TestParseIperfErrors(t *testing.T) {
	// A refused connection: iperf3 -J still exits 0 here, so the report's
	// error field is what tells.
	_, err := ParseIperf(readTestdata(t, "iperf3-refused.json"))
	var ie *iperfError
	if !errors.As(err, &ie) || !strings.Contains(err.Error(), "Connection refused") {
		t.Errorf("refused sample: got %v, want the report's error", err)
	}

	full := readTestdata(t, "iperf3-1stream.json")
	edit := func(f func(r map[string]any)) string {
		var r map[string]any
		if err := json.Unmarshal(full, &r); err != nil {
			t.Fatal(err)
		}
		f(r)
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	for name, in := range map[string]string{
		"empty":     "",
		"not JSON":  "iperf3: error - unable to connect to server",
		"truncated": string(full[:len(full)/2]),
		"UDP": edit(func(r map[string]any) {
			r["start"].(map[string]any)["test_start"].(map[string]any)["protocol"] = "UDP"
		}),
		"nothing received": edit(func(r map[string]any) {
			rx := r["end"].(map[string]any)["sum_received"].(map[string]any)
			rx["bytes"], rx["bits_per_second"] = 0, 0
		}),
	} {
		if got, err := ParseIperf([]byte(in)); err == nil {
			t.Errorf("%s: ParseIperf = %+v, want an error", name, got)
		}
	}
	// The edits alone make the difference.
	if _, err := ParseIperf([]byte(edit(func(map[string]any) {}))); err != nil {
		t.Errorf("re-encoded sample: %v", err)
	}
}

func TestWatchWriter(t *testing.T) {
	w := &watchWriter{want: []byte("Server listening"), seen: make(chan struct{})}
	seen := func() bool {
		select {
		case <-w.seen:
			return true
		default:
			return false
		}
	}
	for _, s := range []string{"-----\nServer lis", "ten"} {
		if n, err := w.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
		if seen() {
			t.Fatalf("seen after %q", s)
		}
	}
	w.Write([]byte("ing on 5201 (test #1)\n"))
	if !seen() {
		t.Fatal("not seen after a line split across writes")
	}
	w.Write([]byte("Server listening on 5201 (test #2)\n")) // must not close twice
}
