package appliance

import (
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/causeway-net/causeway/dataplane/bind"
	"github.com/causeway-net/causeway/dataplane/wgkey"
	"github.com/causeway-net/causeway/probes"
)

func testPath(uplink int, remote string) bind.PathID {
	return bind.PathID{Uplink: uplink, Remote: netip.MustParseAddrPort(remote)}
}

func testPeerKey(t *testing.T) wgkey.PublicKey {
	t.Helper()
	k, err := wgkey.NewPrivate()
	if err != nil {
		t.Fatal(err)
	}
	return k.Public()
}

func TestPathIDsBothWays(t *testing.T) {
	var m pathIDs
	x, y := testPeerKey(t), testPeerKey(t)
	p1, p2, p3 := testPath(0, "198.18.11.2:51820"), testPath(1, "198.18.12.2:51820"), testPath(0, "198.18.13.2:51820")
	id1, id2, id3 := m.add(x, p1), m.add(x, p2), m.add(y, p3)
	if id1 == probes.NoPath || id1 == id2 || id2 == id3 || id1 == id3 {
		t.Fatalf("ids %d %d %d: want distinct and non-zero", id1, id2, id3)
	}
	if again := m.add(x, p1); again != id1 {
		t.Errorf("adding a path again renumbered it: %d -> %d", id1, again)
	}
	for _, c := range []struct {
		id   probes.PathID
		peer wgkey.PublicKey
		path bind.PathID
	}{{id1, x, p1}, {id2, x, p2}, {id3, y, p3}} {
		ref, ok := m.ref(c.id)
		if !ok || ref.peer != c.peer || ref.path != c.path {
			t.Errorf("ref(%d) = %+v, %v; want %v of %s", c.id, ref, ok, c.path, c.peer)
		}
		if id, ok := m.id(c.path); !ok || id != c.id {
			t.Errorf("id(%v) = %d, %v; want %d", c.path, id, ok, c.id)
		}
	}

	// A removed path is forgotten both ways, and its number is not reused.
	m.remove(p2)
	if _, ok := m.ref(id2); ok {
		t.Error("removed path still has its id")
	}
	if _, ok := m.id(p2); ok {
		t.Error("removed path still numbered")
	}
	if id := m.add(x, p2); id == id2 || id == id1 || id == id3 {
		t.Errorf("re-added path got a used id %d", id)
	}

	// A path that moves to another peer is renumbered.
	moved := m.add(y, p1)
	if moved == id1 {
		t.Error("a path that moved to another peer kept its id")
	}
	if ref, _ := m.ref(moved); ref.peer != y {
		t.Errorf("moved path belongs to %s", ref.peer)
	}
	if _, ok := m.ref(id1); ok {
		t.Error("old id of a moved path still resolves")
	}
	if m.len() != 3 {
		t.Errorf("len = %d, want 3", m.len())
	}

	// Numbers wrap around past zero.
	m.last = ^probes.PathID(0)
	if id := m.add(x, testPath(1, "198.18.14.2:51820")); id == probes.NoPath {
		t.Error("wrapped to the reserved id 0")
	}
}

func TestPreferenceOrder(t *testing.T) {
	// The bind lists endpoint by endpoint, each on every uplink.
	in := []bind.PathID{testPath(0, "198.18.11.2:1"), testPath(1, "198.18.11.2:1"), testPath(0, "198.18.12.2:1"), testPath(1, "198.18.12.2:1")}
	want := []bind.PathID{in[0], in[2], in[1], in[3]}
	if got := preferenceOrder(in); !slices.Equal(got, want) {
		t.Errorf("preferenceOrder = %v, want %v", got, want)
	}
	if in[1] != testPath(1, "198.18.11.2:1") {
		t.Error("preferenceOrder sorted its input")
	}
}

// fakeNet is the multipath bind over a simulated network: every path
// reaches a reflector with the far end's keys, unless it is cut.
type fakeNet struct {
	far *probes.Reflector

	mu      sync.Mutex
	paths   map[wgkey.PublicKey][]bind.PathID
	active  map[wgkey.PublicKey]bind.PathID
	cut     map[bind.PathID]bool
	deliver func(pkt []byte, path bind.PathID) []byte
	wg      sync.WaitGroup
}

func newFakeNet(far *probes.Keyring) *fakeNet {
	return &fakeNet{far: probes.NewReflector(far), paths: map[wgkey.PublicKey][]bind.PathID{},
		active: map[wgkey.PublicKey]bind.PathID{}, cut: map[bind.PathID]bool{}}
}

func (n *fakeNet) setPaths(key wgkey.PublicKey, paths ...bind.PathID) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.paths[key] = paths
	if a, ok := n.active[key]; !ok || !slices.Contains(paths, a) {
		if len(paths) > 0 {
			n.active[key] = paths[0]
		} else {
			delete(n.active, key)
		}
	}
}

func (n *fakeNet) setCut(path bind.PathID, cut bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.cut[path] = cut
}

func (n *fakeNet) Paths(key wgkey.PublicKey) []bind.PathID {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.paths[key])
}

func (n *fakeNet) Active(key wgkey.PublicKey) (bind.PathID, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	a, ok := n.active[key]
	return a, ok
}

func (n *fakeNet) SetActive(key wgkey.PublicKey, path bind.PathID) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !slices.Contains(n.paths[key], path) {
		return bind.ErrUnknownPath
	}
	n.active[key] = path
	return nil
}

// SendProbe reflects pkt at the far end and delivers the reply 2 ms later
// on the same path.
func (n *fakeNet) SendProbe(path bind.PathID, pkt []byte) error {
	n.mu.Lock()
	cut, deliver := n.cut[path], n.deliver
	n.mu.Unlock()
	if cut || deliver == nil {
		return nil
	}
	reply, err := n.far.Reflect(pkt)
	if err != nil {
		return nil
	}
	n.wg.Add(1)
	time.AfterFunc(2*time.Millisecond, func() {
		defer n.wg.Done()
		deliver(reply, path)
	})
	return nil
}

func testProbeKey(t *testing.T, id probes.KeyID) probes.Key {
	t.Helper()
	k, err := probes.GenerateKey(id)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustKeyring(t *testing.T, k probes.Key, accepted ...probes.Key) *probes.Keyring {
	t.Helper()
	r, err := probes.NewKeyring(k, accepted...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// fastProber probes every 20 ms, so a dead path goes down after 60 ms.
func fastProber(t *testing.T, net *fakeNet, cfg *Config) *prober {
	t.Helper()
	p := newProber(proberOptions{Uplinks: []string{"wan1", "wan2"}, Probe: probes.Options{Interval: 20 * time.Millisecond}})
	net.mu.Lock()
	net.deliver = p.HandleProbe
	net.mu.Unlock()
	if err := p.start(net, cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.close()
		net.wg.Wait()
	})
	return p
}

// TestProbeHandler checks the adapter the bind calls: requests are
// answered with the key that signed them, replies count only on the path
// their id names, and what fails verification is counted and dropped.
func TestProbeHandler(t *testing.T) {
	key, next := testProbeKey(t, 1), testProbeKey(t, 2)
	peer := testPeerKey(t)
	p1, p2 := testPath(0, "198.18.11.2:51820"), testPath(1, "198.18.12.2:51820")
	p := newProber(proberOptions{Uplinks: []string{"wan1", "wan2"}})
	cfg := &Config{ProbeKey: key, ProbeAccepted: []probes.Key{next}, Peers: []PeerConfig{{Name: "site-b", PublicKey: peer}}}
	if err := p.setKeys(cfg); err != nil {
		t.Fatal(err)
	}

	// Before start (the bind exists, the loop does not): requests are
	// answered, also those signed with the accepted key.
	for _, k := range []probes.Key{key, next} {
		far := mustKeyring(t, k)
		req, _ := probes.Marshal(nil, probes.Packet{Kind: probes.KindRequest, Path: 9, Seq: 1, Timestamp: 5}, far)
		reply := p.HandleProbe(req, p1)
		got, err := probes.Parse(reply, far)
		if err != nil || got.Kind != probes.KindReply || got.Path != 9 || got.Seq != 1 || got.Timestamp != 5 {
			t.Fatalf("reply to a request signed with %v: %+v, %v", k, got, err)
		}
	}
	// A bad MAC and an unknown key: dropped, counted.
	req, _ := probes.Marshal(nil, probes.Packet{Kind: probes.KindRequest, Path: 9, Seq: 2}, mustKeyring(t, key))
	req[40] ^= 1
	if p.HandleProbe(req, p1) != nil {
		t.Error("answered a probe with a bad MAC")
	}
	other, _ := probes.Marshal(nil, probes.Packet{Kind: probes.KindRequest, Path: 9, Seq: 3}, mustKeyring(t, testProbeKey(t, 3)))
	if p.HandleProbe(other, p1) != nil {
		t.Error("answered a probe with an unknown key")
	}
	if p.HandleProbe([]byte{0xC5, 'C', 'W', 'P', 1}, p1) != nil {
		t.Error("answered a truncated probe")
	}

	// After start, our own probes' replies count on their path only.
	net := newFakeNet(mustKeyring(t, key))
	net.setPaths(peer, p1, p2)
	if err := p.start(net, cfg); err != nil {
		t.Fatal(err)
	}
	p.close() // stop the loop; drive the tracker by hand
	id1, _ := p.ids.id(p1)
	var r1 probes.Packet
	waitFor(time.Second, func() bool {
		reqs, _ := p.tr.Poll(time.Now())
		for _, r := range reqs {
			if r.Path == id1 {
				r1 = r
				return true
			}
		}
		return false
	})
	if r1.Path != id1 {
		t.Fatalf("no request for path %d", id1)
	}
	b, _ := probes.Marshal(nil, r1, p.keys)
	reply, err := net.far.Reflect(b)
	if err != nil {
		t.Fatal(err)
	}
	if p.HandleProbe(reply, p2) != nil {
		t.Error("a reply was answered")
	}
	if st, _ := p.tr.Stats(id1); st.Received != 0 {
		t.Error("a reply that came in on another path was counted")
	}
	p.HandleProbe(reply, p1)
	if st, _ := p.tr.Stats(id1); st.Received != 1 {
		t.Errorf("reply on its own path: received %d, want 1", st.Received)
	}
	c := p.counters()
	if c.Reflector.BadMAC != 1 || c.Reflector.UnknownKey != 1 || c.Reflector.Malformed != 1 || c.WrongPath != 1 || c.Reflector.Reflected != 2 {
		t.Errorf("counters = %+v", c)
	}
}

// waitFor polls cond every 5 ms until it holds or d has passed.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(5 * time.Millisecond)
	}
	return cond()
}

// TestProberFailover runs the loop over the simulated network: the peer
// starts on its first path, moves off it within DownAfter of the cut,
// does not move back right after the path returns (hold-down), and every
// move is counted by reason.
func TestProberFailover(t *testing.T) {
	key := testProbeKey(t, 7)
	peer := testPeerKey(t)
	p1, p2 := testPath(0, "198.18.11.2:51820"), testPath(1, "198.18.12.2:51820")
	net := newFakeNet(mustKeyring(t, key))
	net.setPaths(peer, p1, p2)
	cfg := &Config{ProbeKey: key, Peers: []PeerConfig{{Name: "site-b", PublicKey: peer}}}
	p := fastProber(t, net, cfg)

	up := func() bool {
		st := p.status()
		return len(st) == 2 && st[0].Stats.State == probes.StateUp && st[1].Stats.State == probes.StateUp
	}
	if !waitFor(2*time.Second, up) {
		t.Fatalf("paths not up: %+v", p.status())
	}
	if a, _ := net.Active(peer); a != p1 {
		t.Fatalf("active %v, want the first path %v", a, p1)
	}

	net.setCut(p1, true)
	cut := time.Now()
	if !waitFor(2*time.Second, func() bool { a, _ := net.Active(peer); return a == p2 }) {
		t.Fatal("traffic did not leave the cut path")
	}
	took := time.Since(cut)
	t.Logf("moved %v after the cut", took)
	if took > time.Second {
		t.Errorf("moved after %v, want within 1 s", took)
	}
	st := p.status()
	if st[0].Active || !st[1].Active || st[0].Stats.State != probes.StateDown {
		t.Errorf("status after the cut: %+v", st)
	}

	// Restored: up again, but held down (10 s): no move back yet.
	net.setCut(p1, false)
	if !waitFor(2*time.Second, up) {
		t.Fatal("cut path did not come back up")
	}
	time.Sleep(200 * time.Millisecond)
	if a, _ := net.Active(peer); a != p2 {
		t.Errorf("moved back to %v right after recovery", a)
	}
	c := p.counters()
	if c.Moves[probes.ReasonDown] != 1 || c.Moves[probes.ReasonInitial] != 1 || c.Moves[probes.ReasonPreferred] != 0 {
		t.Errorf("moves = %v, want initial 1, down 1", c.Moves)
	}
}

// TestProberSync follows config changes: removed paths stop being
// probed, a peer whose active path goes moves, and turning probing off
// puts each peer back on its first path.
func TestProberSync(t *testing.T) {
	key := testProbeKey(t, 7)
	x, y := testPeerKey(t), testPeerKey(t)
	px1, px2 := testPath(0, "198.18.11.2:51820"), testPath(1, "198.18.12.2:51820")
	py := testPath(0, "198.18.13.2:51820")
	net := newFakeNet(mustKeyring(t, key))
	net.setPaths(x, px1, px2)
	net.setPaths(y, py)
	cfg := &Config{ProbeKey: key, SLA: probes.SLA{MaxRTT: time.Second}, Peers: []PeerConfig{
		{Name: "site-x", PublicKey: x}, {Name: "site-y", PublicKey: y}}}
	p := fastProber(t, net, cfg)
	if n := len(p.tr.Paths()); n != 3 {
		t.Fatalf("%d paths tracked, want 3", n)
	}
	idX2, _ := p.ids.id(px2)
	if !waitFor(2*time.Second, func() bool { return len(p.status()) == 3 && p.status()[1].Stats.State == probes.StateUp }) {
		t.Fatalf("paths not up: %+v", p.status())
	}
	if err := net.SetActive(x, px2); err != nil {
		t.Fatal(err)
	}

	// Peer y goes, peer x loses its first path.
	net.setPaths(x, px2)
	net.setPaths(y)
	cfg2 := &Config{ProbeKey: key, Peers: []PeerConfig{{Name: "site-x", PublicKey: x}}}
	if err := p.sync(cfg2); err != nil {
		t.Fatal(err)
	}
	if got := p.tr.Paths(); !slices.Equal(got, []probes.PathID{idX2}) {
		t.Errorf("tracked %v, want only %d (kept with its number)", got, idX2)
	}
	if st, _ := p.tr.Stats(idX2); st.Received == 0 {
		t.Error("a path that stayed lost its statistics")
	}

	// Probing off: nothing tracked, the peer back on its first path.
	net.setPaths(x, px1, px2)
	if err := net.SetActive(x, px2); err != nil {
		t.Fatal(err)
	}
	if err := p.sync(&Config{Peers: cfg2.Peers}); err != nil {
		t.Fatal(err)
	}
	if n := len(p.tr.Paths()); n != 0 {
		t.Errorf("%d paths tracked with probing off", n)
	}
	if a, _ := net.Active(x); a != px1 {
		t.Errorf("probing off: active %v, want the first path %v", a, px1)
	}
	if len(p.status()) != 0 {
		t.Error("status lists paths with probing off")
	}
}
