package lab

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"math"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/causeway-net/causeway/appliance"
)

// metrics scrapes an appliance's /metrics and returns every sample whose
// series name and labels contain all of the given parts.
func metrics(ctx context.Context, l *Lab, name string) (map[string]float64, error) {
	body, err := fetch(ctx, l, name, "http://"+appliance.DefaultHTTPListen+"/metrics")
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out, nil
}

// sum adds the samples whose series contain every part.
func sum(m map[string]float64, parts ...string) float64 {
	var s float64
next:
	for k, v := range m {
		for _, p := range parts {
			if !strings.Contains(k, p) {
				continue next
			}
		}
		s += v
	}
	return s
}

// pathOf gives the label parts of office-1a's paths to vpc-1: over its
// own wan1 and over wan2, borrowed from office-1b.
func pathOf(uplink string) []string {
	return []string{`peer="vpc-1"`, `remote="198.18.2.2:51820"`, `uplink="` + uplink + `"`}
}

func waitMetric(ctx context.Context, t *testing.T, l *Lab, name string, ok func(map[string]float64) bool) map[string]float64 {
	t.Helper()
	for {
		m, err := metrics(ctx, l, name)
		if err == nil && ok(m) {
			return m
		}
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s's metrics: %v (last error %v)", name, ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// TestPaths checks path probing in the lab: office-1a probes vpc-1 over
// both ISPs (wan2 borrowed from its partner office-1b); cutting the active
// one under a 10 ms UDP stream moves the traffic with a gap of at most 1
// s; restoring it does not flap; injected loss and delay show in the
// reported figures.
func TestPaths(t *testing.T) {
	l := upLab(t, "path", 0)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	up := func(uplink string) func(map[string]float64) bool {
		return func(m map[string]float64) bool {
			return sum(m, append(pathOf(uplink), "causeway_path_up")...) == 1
		}
	}
	waitMetric(ctx, t, l, memberA, func(m map[string]float64) bool {
		return up("wan1")(m) && up("wan2")(m) && sum(m, append(pathOf("wan1"), "causeway_path_active")...) == 1
	})

	t.Run("failover", func(t *testing.T) {
		rx := udpIn(t, l.Netns("vpc-1-backend-1"), "10.20.0.10:7001")
		tx := udpDial(t, l.Netns("office-1-host"), "", "10.20.0.10:7001")
		const n, gap = 600, 10 * time.Millisecond // 6 s
		arrivals := make([]time.Time, 0, n)
		var mu sync.Mutex
		go func() {
			buf := make([]byte, 64)
			for {
				if _, err := rx.Read(buf); err != nil {
					return
				}
				mu.Lock()
				arrivals = append(arrivals, time.Now())
				mu.Unlock()
			}
		}()
		var cut time.Time
		buf := make([]byte, 64)
		start := time.Now()
		for i := range n {
			if i == 200 {
				if err := l.Impair(ctx, memberA, "wan1", Impairment{Down: true}); err != nil {
					t.Fatal(err)
				}
				cut = time.Now()
			}
			binary.BigEndian.PutUint32(buf, uint32(i))
			tx.Write(buf)
			time.Sleep(time.Until(start.Add(time.Duration(i+1) * gap)))
		}
		time.Sleep(300 * time.Millisecond)
		rx.Close()
		mu.Lock()
		defer mu.Unlock()
		var longest time.Duration
		var after int
		for i := 1; i < len(arrivals); i++ {
			longest = max(longest, arrivals[i].Sub(arrivals[i-1]))
			if arrivals[i].After(cut) {
				after++
			}
		}
		t.Logf("wan1 cut: %d of %d datagrams arrived, %d after the cut; longest gap %v", len(arrivals), n, after, longest)
		if longest > time.Second {
			t.Errorf("longest gap %v, want <= 1s", longest)
		}
		if after < 300 {
			t.Errorf("only %d datagrams arrived after the cut: traffic did not move to wan2", after)
		}
		m, err := metrics(ctx, l, memberA)
		if err != nil {
			t.Fatal(err)
		}
		if sum(m, append(pathOf("wan2"), "causeway_path_active")...) != 1 || sum(m, `causeway_path_changes_total{reason="down"}`) < 1 {
			t.Errorf("after the cut wan2 is not the active path or no move was counted")
		}
	})

	t.Run("restore-no-flap", func(t *testing.T) {
		before, err := metrics(ctx, l, memberA)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Clear(memberA, "wan1"); err != nil {
			t.Fatal(err)
		}
		waitMetric(ctx, t, l, memberA, up("wan1"))
		time.Sleep(5 * time.Second)
		after, err := metrics(ctx, l, memberA)
		if err != nil {
			t.Fatal(err)
		}
		moves := sum(after, "causeway_path_changes_total") - sum(before, "causeway_path_changes_total")
		t.Logf("path moves in the 5 s after wan1 came back: %v", moves)
		if moves > 1 {
			t.Errorf("%v path moves after the restore: flapping", moves)
		}
	})

	t.Run("loss", func(t *testing.T) {
		// Every path whose probes cross wan1 towards office-1a, where the
		// loss is injected: the pair's paths to vpc-1 on wan1 (office-1a's
		// own, office-1b's borrowed) lose replies, vpc-1's and home-1's
		// paths to the wan1 address (office-1a's port, and the one lent to
		// office-1b) lose requests.
		crossing := []struct{ appliance, peer, uplink, remote string }{
			{memberA, "vpc-1", "wan1", "198.18.2.2:51820"},
			{memberB, "vpc-1", "wan1", "198.18.2.2:51820"},
			{"vpc-1", memberA, "wan0", "198.18.1.2:51820"},
			{"vpc-1", memberB, "wan0", "198.18.1.2:51821"},
			{"home-1", memberA, "wan0", "198.18.1.2:51820"},
			{"home-1", memberB, "wan0", "198.18.1.2:51821"},
		}
		probeCounts := func() (lost, received float64) {
			for _, c := range crossing {
				m, err := metrics(ctx, l, c.appliance)
				if err != nil {
					t.Fatal(err)
				}
				sel := []string{"causeway_path_probes_total", `peer="` + c.peer + `"`, `uplink="` + c.uplink + `"`, `remote="` + c.remote + `"`}
				lost += sum(m, append(sel, `outcome="lost"`)...)
				received += sum(m, append(sel, `outcome="received"`)...)
			}
			return
		}
		if err := l.Impair(ctx, memberA, "wan1", Impairment{Loss: 5}); err != nil {
			t.Fatal(err)
		}
		defer l.Clear(memberA, "wan1")
		// A probe settles (answered or lost) within the 1 s loss timeout:
		// start counting once those sent before the impairment have.
		time.Sleep(1500 * time.Millisecond)
		l0, r0 := probeCounts()
		c0, err := l.ImpairCounters(memberA, "wan1")
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(60 * time.Second)
		c1, err := l.ImpairCounters(memberA, "wan1")
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(1500 * time.Millisecond) // let the last window's probes settle
		l1, r1 := probeCounts()
		lost, got := l1-l0, r1-r0
		reported := 100 * lost / (lost + got)
		// What the router really dropped towards office-1a in the window:
		// nearly all of that traffic is probes, so this is the truth the
		// report is held to; the injected 5% itself is a random draw.
		dropped := float64(c1.Out.Dropped - c0.Out.Dropped)
		actual := 100 * dropped / float64(c1.Out.Packets-c0.Out.Packets)
		t.Logf("5%% loss on wan1 for 60 s: %v of %v probes lost, reported %.2f%%; the router dropped %.2f%% (%v packets)",
			lost, lost+got, reported, actual, dropped)
		if math.IsNaN(reported) || math.Abs(reported-actual) > 1.5 {
			t.Errorf("reported loss %.2f%%, dropped %.2f%%: want within 1.5 points", reported, actual)
		}
		if math.Abs(actual-5) > 2.5 {
			t.Errorf("the router dropped %.2f%%, not about 5%%: the impairment is off", actual)
		}
	})

	t.Run("delay", func(t *testing.T) {
		rtt := func() float64 {
			m, err := metrics(ctx, l, memberA)
			if err != nil {
				t.Fatal(err)
			}
			return sum(m, append(pathOf("wan1"), "causeway_path_rtt_seconds", `stat="p50"`)...)
		}
		base := rtt()
		if err := l.Impair(ctx, memberA, "wan1", Impairment{Delay: 30 * time.Millisecond}); err != nil {
			t.Fatal(err)
		}
		defer l.Clear(memberA, "wan1")
		time.Sleep(12 * time.Second) // the RTT window is the last 50 replies (10 s)
		added := (rtt() - base) * 1000
		t.Logf("30 ms delay on wan1: reported p50 RTT %.2f ms -> up by %.2f ms", base*1000, added)
		if math.Abs(added-30) > 3 {
			t.Errorf("reported RTT up by %.2f ms, want 30 ± 3", added)
		}
	})

	t.Run("report", func(t *testing.T) {
		// The loss report per path, from the history the appliances
		// shipped during the subtests above.
		var out string
		deadline := time.Now().Add(25 * time.Second)
		for {
			var err error
			out, err = l.Ctl(ctx, "paths", l.Tenant(), "--from", "office-1", "--to", "vpc-1", "--since", "1h")
			if err == nil && strings.Contains(out, "wan1") && strings.Contains(out, "wan2") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("ctl paths: %v\n%s", err, out)
			}
			time.Sleep(time.Second)
		}
		var rep struct {
			Paths []struct {
				Appliance, Peer, Uplink, Remote string
				Summary                         struct {
					Sent        int64   `json:"sent"`
					Lost        int64   `json:"lost"`
					LossPercent float64 `json:"loss_percent"`
					RTTP50MS    float64 `json:"rtt_p50_ms"`
				}
			}
		}
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("ctl paths: %v\n%s", err, out)
		}
		seen := map[string]bool{}
		for _, p := range rep.Paths {
			t.Logf("%s -> %s via %s to %s: %d probes, loss %.2f%%, RTT p50 %.2f ms",
				p.Appliance, p.Peer, p.Uplink, p.Remote, p.Summary.Sent, p.Summary.LossPercent, p.Summary.RTTP50MS)
			if p.Appliance != memberA {
				continue
			}
			seen[p.Uplink] = true
			if p.Uplink == "wan1" && (p.Summary.Lost == 0 || p.Summary.LossPercent <= 0) {
				t.Errorf("wan1 was cut and lossy, yet its report shows no loss: %+v", p.Summary)
			}
		}
		if !seen["wan1"] || !seen["wan2"] {
			t.Errorf("report lacks office-1a's paths: %v", seen)
		}
	})
}
