package probes_test

import (
	"fmt"
	"time"

	"github.com/causeway-net/causeway/probes"
)

// One probe's round trip: the sender marshals a request for its path, the
// far end reflects it, and the sender parses the reply and hands it to the
// path.
func Example() {
	secret := make([]byte, probes.KeyLen)
	secret[0] = 1 // a real key comes from the controller
	key, _ := probes.NewKey(1, secret)
	keys, _ := probes.NewKeyring(key)

	start := time.Now()
	path := probes.NewPath(7, probes.Options{}, start)
	reflector := probes.NewReflector(keys) // on the far appliance

	for i := range 3 {
		sent := start.Add(time.Duration(i) * 200 * time.Millisecond)
		req, _ := probes.Marshal(nil, path.Probe(sent), keys)

		// ... req crosses the path; the far end answers it ...
		rep, err := reflector.Reflect(req)
		if err != nil {
			continue // dropped and counted
		}

		// ... and the reply comes back 30 ms after the request left.
		if !probes.IsProbe(rep) {
			continue // a WireGuard message: hand it to WireGuard
		}
		pkt, err := probes.Parse(rep, keys)
		if err != nil {
			continue
		}
		path.Reply(pkt, sent.Add(30*time.Millisecond))
	}
	for _, tr := range path.Advance(start.Add(time.Second)) {
		fmt.Println(tr)
	}
	st := path.Stats()
	fmt.Println(st.State, st.RTTMean, st.LossPercent)
	// Output:
	// path 7 unknown -> up: 3 consecutive replies
	// up 30ms 0
}

// The selector of a peer with two paths: the active one goes down, and the
// move comes with its reason.
func ExampleSelector() {
	sel := probes.NewSelector(probes.SelectorOptions{
		SLA: probes.SLA{MaxLossPercent: 2, MaxRTT: 150 * time.Millisecond},
	})
	now := time.Now()
	up := probes.Stats{State: probes.StateUp, RTTMean: 20 * time.Millisecond}
	down := probes.Stats{State: probes.StateDown}

	d := sel.Select(now, []probes.Candidate{
		{Path: 1, Priority: 10, Stats: up},
		{Path: 2, Priority: 20, Stats: up},
	})
	fmt.Println(d.Active, d.Reason)

	d = sel.Select(now.Add(time.Second), []probes.Candidate{
		{Path: 1, Priority: 10, Stats: down},
		{Path: 2, Priority: 20, Stats: up},
	})
	fmt.Println(d.Active, d.Reason, d.Detail)
	// Output:
	// 1 initial
	// 2 down down
}
