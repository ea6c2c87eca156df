package bench

import (
	"math"
	"strings"
	"testing"
)

// The samples are `ping -n -c N -i 0.01 -W 1` from office-1: to vpc-1's
// overlay address through the tunnel, to its underlay address, to the
// overlay address while vpc-1's appliance was being stopped, and once it
// had stopped.
func TestParsePing(t *testing.T) {
	for _, tc := range []struct {
		file                string
		sent, received      int
		first, last, median float64
	}{
		{"ping-tunnel.txt", 300, 300, 0.772, 0.361, 0.3765},
		{"ping-underlay.txt", 300, 300, 0.027, 0.009, 0.024},
		{"ping-partial-loss.txt", 200, 94, 0.648, 0.284, 0.3695},
	} {
		p, err := ParsePing(readTestdata(t, tc.file))
		if err != nil {
			t.Errorf("%s: %v", tc.file, err)
			continue
		}
		if p.Sent != tc.sent || p.Received != tc.received || len(p.RTTs) != tc.received {
			t.Errorf("%s: sent %d, received %d, %d RTTs; want %d, %d, %d", tc.file, p.Sent, p.Received, len(p.RTTs), tc.sent, tc.received, tc.received)
			continue
		}
		if p.RTTs[0] != tc.first || p.RTTs[len(p.RTTs)-1] != tc.last {
			t.Errorf("%s: first and last RTT %v, %v; want %v, %v", tc.file, p.RTTs[0], p.RTTs[len(p.RTTs)-1], tc.first, tc.last)
		}
		if got := p.Median(); math.Abs(got-tc.median) > 1e-9 {
			t.Errorf("%s: median %v, want %v", tc.file, got, tc.median)
		}
	}
}

func TestParsePingNoReplies(t *testing.T) {
	p, err := ParsePing(readTestdata(t, "ping-unreachable.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if p.Sent != 5 || p.Received != 0 || len(p.RTTs) != 0 || !math.IsNaN(p.Median()) {
		t.Errorf("got %+v, median %v; want 5 sent, none received, NaN", p, p.Median())
	}
}

func TestParsePingEdgeCases(t *testing.T) {
	const dup = `PING 100.64.0.2 (100.64.0.2) 56(84) bytes of data.
64 bytes from 100.64.0.2: icmp_seq=1 ttl=64 time=0.412 ms
64 bytes from 100.64.0.2: icmp_seq=1 ttl=64 time=0.950 ms (DUP!)
64 bytes from 100.64.0.2: icmp_seq=2 ttl=64 time<0.001 ms

--- 100.64.0.2 ping statistics ---
2 packets transmitted, 2 received, +1 duplicates, 0% packet loss, time 10ms
`
	p, err := ParsePing([]byte(dup))
	if err != nil {
		t.Fatal(err)
	}
	if p.Sent != 2 || p.Received != 2 || len(p.RTTs) != 2 || p.RTTs[0] != 0.412 || p.RTTs[1] != 0.001 {
		t.Errorf("duplicates: got %+v", p)
	}

	full := string(readTestdata(t, "ping-tunnel.txt"))
	noSummary := full[:strings.Index(full, "---")]
	if _, err := ParsePing([]byte(noSummary)); err == nil {
		t.Error("output without the statistics line: want an error")
	}
	cut := strings.Replace(full, "64 bytes from 100.64.0.2: icmp_seq=7 ", "", 1)
	if cut == full {
		t.Fatal("the sample no longer has icmp_seq=7")
	}
	if _, err := ParsePing([]byte(cut)); err == nil {
		t.Error("fewer reply lines than the statistics count: want an error")
	}
}
