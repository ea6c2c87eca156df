package lab

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/causeway-net/causeway/appliance"
	"github.com/causeway-net/causeway/controller/metering"
	"github.com/causeway-net/causeway/controller/metering/sink"
)

// The end-to-end metering tests: real appliances count real traffic, ship
// it to the real controller, which keeps the ledger and exports it to the
// lab's meter sink. Every figure is checked against a counter outside
// Causeway: an nftables counter on the host that receives, on the Internet
// router or on web-1, or the bytes the test itself sent.

// The test traffic's UDP port on the receiving hosts.
const meterTestPort = 9000

// reconcileTolerance is how far a metered figure may be from its
// independent counter: 0.5%.
const reconcileTolerance = 0.005

// The ledger's sums of the flow most tests send: from a host at office-1
// to one at vpc-1.
var (
	flowTx = ledgerKey{"office-1", appliance.MeterOverlay, appliance.DirTx, "vpc-1"}
	flowRx = ledgerKey{"vpc-1", appliance.MeterOverlay, appliance.DirRx, "office-1"}
)

// meterLab is a lab for a metering test, with a receiver for the flow.
type meterLab struct {
	*Lab
	srcHost, dstHost string
	dst              netip.AddrPort
	rcv              *udpReceiver
}

// newMeterLab builds the lab and returns it with a context that ends
// after timeout or with the test.
func newMeterLab(t *testing.T, tag string, timeout time.Duration) (*meterLab, context.Context) {
	t.Helper()
	m := &meterLab{Lab: upLab(t, tag, os.Getpid())}
	m.srcHost, _ = siteHost(t, m.Lab, "office-1")
	dstHost, a := siteHost(t, m.Lab, "vpc-1")
	m.dstHost, m.dst = dstHost, netip.AddrPortFrom(a, meterTestPort)
	m.rcv = receiveUDP(t, m.Lab, m.dstHost, m.dst, false)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	return m, ctx
}

// dial connects a UDP socket from the flow's source host to its receiver.
func (m *meterLab) dial(t *testing.T) *net.UDPConn {
	return udpDial(t, m.Netns(m.srcHost), "", m.dst.String())
}

// received returns what arrived since an earlier reading of the receiver.
func (m *meterLab) received(since usageSum) usageSum {
	got, _ := m.rcv.counts()
	return got.minus(since)
}

// checkFlow checks that the flow's sums grew from before to after by what
// was sent and by what arrived, and that every other sum stayed put.
func checkFlow(t *testing.T, before, after ledgerView, sent, got usageSum) {
	t.Helper()
	if d := after.sums[flowTx].minus(before.sums[flowTx]); d != sent {
		t.Errorf("%s grew by %+v, %+v were sent", flowTx, d, sent)
	}
	if d := after.sums[flowRx].minus(before.sums[flowRx]); d != got {
		t.Errorf("%s grew by %+v, %+v arrived", flowRx, d, got)
	}
	checkOthersStill(t, before, after, flowTx, flowRx)
}

// usageSum is bytes and packets.
type usageSum struct{ Bytes, Packets int64 }

func (u usageSum) minus(v usageSum) usageSum {
	return usageSum{u.Bytes - v.Bytes, u.Packets - v.Packets}
}

// ledgerKey names one of the ledger's sums over hours: a site, a meter,
// a direction and, for the overlay, the peer site (by name).
type ledgerKey struct{ site, meter, dir, peer string }

func (k ledgerKey) String() string {
	if k.peer == "" {
		return k.site + " " + k.meter + " " + k.dir
	}
	return k.site + " " + k.meter + " " + k.dir + " " + k.peer
}

// exportKey names one of the sums the meter sink keeps: a site id and an
// exported meter name.
type exportKey struct{ site, meter string }

// ledgerView is the controller's ledger of the lab tenant, summed over
// hours, both ways.
type ledgerView struct {
	sums   map[ledgerKey]usageSum
	export map[exportKey]usageSum
}

// readLedger reads the ledger through `causeway ctl usage`.
func readLedger(ctx context.Context, l *Lab) (ledgerView, error) {
	var rep struct {
		Items []struct {
			Site         string `json:"site"`
			SiteName     string `json:"site_name"`
			PeerSiteName string `json:"peer_site_name"`
			Meter        string `json:"meter"`
			Direction    string `json:"direction"`
			Bytes        int64  `json:"bytes"`
			Packets      int64  `json:"packets"`
		} `json:"items"`
	}
	if err := l.ctlJSON(ctx, &rep, "usage", "--tenant", l.Tenant(), "--since", "3h"); err != nil {
		return ledgerView{}, err
	}
	v := ledgerView{sums: map[ledgerKey]usageSum{}, export: map[exportKey]usageSum{}}
	for _, it := range rep.Items {
		k := ledgerKey{it.SiteName, it.Meter, it.Direction, it.PeerSiteName}
		s := v.sums[k]
		v.sums[k] = usageSum{s.Bytes + it.Bytes, s.Packets + it.Packets}
		ek := exportKey{it.Site, metering.DefaultMeters[it.Meter+"."+it.Direction]}
		e := v.export[ek]
		v.export[ek] = usageSum{e.Bytes + it.Bytes, e.Packets + it.Packets}
	}
	return v, nil
}

// mustLedger reads the ledger or fails the test.
func mustLedger(ctx context.Context, t *testing.T, l *Lab) ledgerView {
	t.Helper()
	v, err := readLedger(ctx, l)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// readSink reads the meter sink's sums by site and meter.
func readSink(ctx context.Context, l *Lab) (map[exportKey]usageSum, *sink.Totals, error) {
	tot, err := l.MeterSinkTotals(ctx, "customer", "site", "meter")
	if err != nil {
		return nil, nil, err
	}
	out := map[exportKey]usageSum{}
	for _, g := range tot.Groups {
		if g.Customer != BillingCustomer {
			return nil, nil, fmt.Errorf("the sink holds events for customer %q", g.Customer)
		}
		k := exportKey{g.Site, g.Meter}
		s := out[k]
		out[k] = usageSum{s.Bytes + g.Bytes, s.Packets + g.Packets}
	}
	return out, tot, nil
}

// meteringStatus is the part of GET /api/v1/metering/status the tests
// look at.
type meteringStatus struct {
	QueueLength int64  `json:"queue_length"`
	DeadLetters int64  `json:"dead_letters"`
	Sent        int64  `json:"sent"`
	Retried     int64  `json:"retried"`
	Throttled   int64  `json:"throttled"`
	LastError   string `json:"last_error"`
}

func readMeteringStatus(ctx context.Context, t *testing.T, l *Lab) meteringStatus {
	t.Helper()
	var st meteringStatus
	if err := l.ctlJSON(ctx, &st, "metering", "status"); err != nil {
		t.Fatal(err)
	}
	return st
}

// siteAppliances returns the appliances of a site, from the lab's status.
func siteAppliances(l *Lab, site string) []ApplianceStatus {
	var out []ApplianceStatus
	for _, a := range l.Status().Appliances {
		if a.Site == site {
			out = append(out, a)
		}
	}
	return out
}

// siteHost returns a host on the site's LAN and its address: the last
// one listed (at vpc-1, the backend that runs no service).
func siteHost(t *testing.T, l *Lab, site string) (string, netip.Addr) {
	t.Helper()
	var name string
	var addr netip.Addr
	for _, h := range l.Status().Hosts {
		if h.Site == site && len(h.Addrs) > 0 {
			name, addr = h.Name, netip.MustParseAddr(h.Addrs[0])
		}
	}
	if name == "" {
		t.Fatalf("no host at site %s", site)
	}
	return name, addr
}

// spoolsEmpty reports whether every running appliance has shipped every
// record it cut.
func spoolsEmpty(ctx context.Context, l *Lab) (bool, string) {
	for _, a := range l.Status().Appliances {
		if a.PID == 0 {
			continue
		}
		m, err := metrics(ctx, l, a.Name)
		if err != nil {
			return false, fmt.Sprintf("%s: %v", a.Name, err)
		}
		if n := m["causeway_usage_spool_records"] + m["causeway_usage_memory_records"]; n > 0 {
			return false, fmt.Sprintf("%s holds %v records", a.Name, n)
		}
	}
	return true, ""
}

// waitQuiet waits until the ledger holds everything counted so far: every
// spool is empty and the ledger does not change over more than a usage
// interval. It returns the ledger then.
func waitQuiet(ctx context.Context, t *testing.T, l *Lab) ledgerView {
	t.Helper()
	var why string
	for ctx.Err() == nil {
		a := mustLedger(ctx, t, l)
		time.Sleep(UsageInterval + time.Second)
		b := mustLedger(ctx, t, l)
		empty, w := spoolsEmpty(ctx, l)
		if empty && maps.Equal(a.sums, b.sums) {
			return b
		}
		why = w
		if why == "" {
			why = "the ledger still grows"
		}
	}
	t.Fatalf("the ledger never settled: %s", why)
	return ledgerView{}
}

// waitLedger polls the ledger until ok accepts it; then, to be sure that
// nothing more is coming, it reads it again after a usage interval and
// more and returns that reading.
func waitLedger(ctx context.Context, t *testing.T, l *Lab, ok func(ledgerView) bool, describe func(ledgerView) string) ledgerView {
	t.Helper()
	var last ledgerView
	for ctx.Err() == nil {
		v := mustLedger(ctx, t, l)
		last = v
		if ok(v) {
			if empty, _ := spoolsEmpty(ctx, l); empty {
				time.Sleep(UsageInterval + time.Second)
				return mustLedger(ctx, t, l)
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("the ledger never got there: %s", describe(last))
	return ledgerView{}
}

// waitExported waits until the traffic has stopped reaching the ledger
// (waitQuiet), the outbox is empty, and the meter sink's sums equal the
// ledger's, exactly, for every site and meter. It fails if any event is
// a dead letter.
func waitExported(ctx context.Context, t *testing.T, l *Lab) (ledgerView, *sink.Totals) {
	t.Helper()
	v := waitQuiet(ctx, t, l)
	var last string
	for ctx.Err() == nil {
		st := readMeteringStatus(ctx, t, l)
		if st.DeadLetters > 0 {
			t.Fatalf("%d dead letters: %s", st.DeadLetters, deadLetterReasons(ctx, t, l))
		}
		got, tot, err := readSink(ctx, l)
		if err != nil {
			t.Fatal(err)
		}
		if st.QueueLength == 0 && maps.Equal(got, v.export) {
			return v, tot
		}
		last = fmt.Sprintf("queue %d, sink %v, ledger %v", st.QueueLength, got, v.export)
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("the sink never caught up with the ledger: %s", last)
	return ledgerView{}, nil
}

func deadLetterReasons(ctx context.Context, t *testing.T, l *Lab) string {
	var dl struct {
		Items []struct {
			Reason string `json:"reason"`
		} `json:"items"`
	}
	if err := l.ctlJSON(ctx, &dl, "metering", "dead-letters"); err != nil {
		return err.Error()
	}
	seen := map[string]bool{}
	for _, it := range dl.Items {
		seen[it.Reason] = true
	}
	return strings.Join(slices.Sorted(maps.Keys(seen)), "; ")
}

// checkSinkEvents checks every event the sink holds: each id once, and no
// usage twice under different ids: the events of one appliance, meter and
// direction cover spans of time that do not overlap. It returns the
// copies the sink received of events it held already.
func checkSinkEvents(ctx context.Context, t *testing.T, l *Lab, tot *sink.Totals) int64 {
	t.Helper()
	evs, err := l.MeterSinkEvents(ctx, 100000)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(evs)) != tot.Events {
		t.Errorf("the sink lists %d events, its totals count %d", len(evs), tot.Events)
	}
	type span struct {
		start, end time.Time
		id         string
	}
	ids := map[string]bool{}
	spans := map[string][]span{}
	var copies int64
	for _, e := range evs {
		if ids[e.ID] {
			t.Errorf("event %s stored twice", e.ID)
		}
		ids[e.ID] = true
		copies += e.Copies - 1
		var d metering.UsageData
		if err := json.Unmarshal(e.Data, &d); err != nil {
			t.Fatalf("event %s: %v", e.ID, err)
		}
		k := d.Appliance + " " + d.Meter
		spans[k] = append(spans[k], span{d.Start, d.End, e.ID})
	}
	for k, ss := range spans {
		slices.SortFunc(ss, func(a, b span) int { return a.start.Compare(b.start) })
		for i := 1; i < len(ss); i++ {
			if ss[i].start.Before(ss[i-1].end) {
				t.Errorf("%s: events %s (%s to %s) and %s (%s to %s) overlap: usage exported twice", k,
					ss[i-1].id, ss[i-1].start, ss[i-1].end, ss[i].id, ss[i].start, ss[i].end)
			}
		}
	}
	if copies != tot.Duplicates {
		t.Errorf("the events' copies add up to %d, the totals say %d", copies, tot.Duplicates)
	}
	return copies
}

// relErr is (got - want) / want.
func relErr(got, want int64) float64 {
	if want == 0 {
		if got == 0 {
			return 0
		}
		return math.Inf(1)
	}
	return float64(got-want) / float64(want)
}

// reconcile checks a metered figure against its independent counter.
func reconcile(t *testing.T, what string, metered, counter int64) {
	t.Helper()
	e := relErr(metered, counter)
	t.Logf("%s: metered %d, counted %d, error %+.4f%%", what, metered, counter, 100*e)
	if math.Abs(e) > reconcileTolerance {
		t.Errorf("%s: metered %d, counted %d: off by %+.3f%%, more than %.1f%%", what, metered, counter, 100*e, 100*reconcileTolerance)
	}
}

// underlayBytes is what the overlay puts on an IPv4 underlay for an inner
// IP packet of n bytes (docs/metering.md, Encapsulation overhead): the
// WireGuard data header and tag (32), the plaintext padded to 16 but not
// beyond the MTU, the outer UDP and IP headers (28).
func underlayBytes(n, mtu int) int64 {
	return int64(32 + min((n+15)/16*16, mtu) + 28)
}

// nftCounter counts, in one base chain of its own in a node's namespace,
// the packets that match.
type nftCounter struct {
	ns    string
	chain *nftables.Chain
}

var meterTestTable = &nftables.Table{Family: nftables.TableFamilyIPv4, Name: "causeway_meter_test"}

func nftIn(t *testing.T, ns string, fn func(*nftables.Conn) error) {
	t.Helper()
	fd, err := unix.Open(netnsPath(ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	c, err := nftConn(fd)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseLasting()
	if err := fn(c); err != nil {
		t.Fatalf("nftables in %s: %v", ns, err)
	}
}

// addCounter adds `<match...> counter` in a new chain at hook (filter,
// priority 0) of node's namespace. The namespace takes it along when the
// lab goes down.
func addCounter(t *testing.T, l *Lab, node, name string, hook *nftables.ChainHook, match ...[]expr.Any) *nftCounter {
	t.Helper()
	n := &nftCounter{ns: l.Netns(node)}
	nftIn(t, n.ns, func(c *nftables.Conn) error {
		tb := c.AddTable(meterTestTable)
		n.chain = c.AddChain(&nftables.Chain{Name: name, Table: tb, Type: nftables.ChainTypeFilter, Hooknum: hook,
			Priority: nftables.ChainPriorityFilter})
		var exprs []expr.Any
		for _, m := range match {
			exprs = append(exprs, m...)
		}
		c.AddRule(&nftables.Rule{Table: tb, Chain: n.chain, Exprs: append(exprs, &expr.Counter{})})
		return c.Flush()
	})
	return n
}

// read returns what the counter has counted.
func (n *nftCounter) read(t *testing.T) usageSum {
	t.Helper()
	var s usageSum
	nftIn(t, n.ns, func(c *nftables.Conn) error {
		rules, err := c.GetRules(meterTestTable, n.chain)
		if err != nil {
			return err
		}
		for _, r := range rules {
			for _, e := range r.Exprs {
				if ctr, ok := e.(*expr.Counter); ok {
					s.Bytes += int64(ctr.Bytes)
					s.Packets += int64(ctr.Packets)
				}
			}
		}
		return nil
	})
	return s
}

// udpPort matches UDP with the destination (or source) port.
func udpPort(dst bool, port uint16) []expr.Any {
	off := uint32(0)
	if dst {
		off = 2
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: off, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, port)},
	}
}

// outIface matches packets leaving through the interface.
func outIface(name string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(name)},
	}
}

// ipLenAtLeast matches IPv4 packets of at least n bytes.
func ipLenAtLeast(n uint16) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpGte, Register: 1, Data: binary.BigEndian.AppendUint16(nil, n)},
	}
}

// udpReceiver takes datagrams on a host and counts them: packets, IP
// bytes (payload + 28) and distinct sequence numbers (the first four
// bytes of each).
type udpReceiver struct {
	c    *net.UDPConn
	done chan struct{}

	mu      sync.Mutex
	got     usageSum
	seen    map[uint32]bool
	answers bool // echo every datagram back
}

func receiveUDP(t *testing.T, l *Lab, node string, at netip.AddrPort, echoBack bool) *udpReceiver {
	t.Helper()
	r := &udpReceiver{c: udpIn(t, l.Netns(node), at.String()), done: make(chan struct{}), seen: map[uint32]bool{}, answers: echoBack}
	go r.run()
	t.Cleanup(func() { r.c.Close(); <-r.done })
	return r
}

func (r *udpReceiver) run() {
	defer close(r.done)
	buf := make([]byte, 2048)
	for {
		n, from, err := r.c.ReadFromUDP(buf)
		if err != nil {
			return
		}
		r.mu.Lock()
		r.got.Packets++
		r.got.Bytes += int64(n + 28)
		if n >= 4 {
			r.seen[binary.BigEndian.Uint32(buf)] = true
		}
		r.mu.Unlock()
		if r.answers {
			r.c.WriteToUDP(buf[:n], from)
		}
	}
}

// counts returns what arrived so far and how many distinct sequence
// numbers.
func (r *udpReceiver) counts() (usageSum, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.got, len(r.seen)
}

// udpSent is what a sender sent: packets, IP bytes and the IP length of
// each packet.
type udpSent struct {
	usageSum
	lens []int
}

func (s *udpSent) add(o udpSent) {
	s.Packets += o.Packets
	s.Bytes += o.Bytes
	s.lens = append(s.lens, o.lens...)
}

// sendUDP sends n datagrams on c, numbered from seq, datagram i with
// size(i) bytes of payload, at pps datagrams a second. Writes that fail
// are not counted.
func sendUDP(c *net.UDPConn, seq uint32, n int, size func(i int) int, pps int) udpSent {
	var s udpSent
	buf := make([]byte, 2048)
	gap := time.Second / time.Duration(pps)
	start := time.Now()
	for i := range n {
		m := size(i)
		binary.BigEndian.PutUint32(buf, seq+uint32(i))
		if _, err := c.Write(buf[:m]); err == nil {
			s.Packets++
			s.Bytes += int64(m + 28)
			s.lens = append(s.lens, m+28)
		}
		if d := time.Until(start.Add(time.Duration(i+1) * gap)); d > 0 {
			time.Sleep(d)
		}
	}
	return s
}

// udpStream sends numbered datagrams of one size, gap apart, until stopped.
type udpStream struct {
	stop chan struct{}
	done chan struct{}
	sent udpSent
}

func streamUDP(c *net.UDPConn, seq uint32, payload int, gap time.Duration) *udpStream {
	s := &udpStream{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		buf := make([]byte, payload)
		start := time.Now()
		for i := 0; ; i++ {
			select {
			case <-s.stop:
				return
			default:
			}
			binary.BigEndian.PutUint32(buf, seq+uint32(i))
			if _, err := c.Write(buf); err == nil {
				s.sent.Packets++
				s.sent.Bytes += int64(payload + 28)
			}
			time.Sleep(time.Until(start.Add(time.Duration(i+1) * gap)))
		}
	}()
	return s
}

// end stops the stream and returns what it sent.
func (s *udpStream) end() udpSent {
	close(s.stop)
	<-s.done
	return s.sent
}

// varied is a payload size from 200 to 1312 bytes (an inner packet of 228
// to 1340, the overlay's MTU), spread over every remainder modulo 16, so
// that the tunnel's padding takes every value.
func varied(i int) int { return 200 + (i*37)%1113 }

// overlayMTU is the MTU of an appliance's overlay interface.
func overlayMTU(t *testing.T, l *Lab, name string) int {
	t.Helper()
	h, err := netlinkHandle(l.Netns(name))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	link, err := h.LinkByName(appliance.DefaultInterface)
	if err != nil {
		t.Fatal(err)
	}
	return link.Attrs().MTU
}

// requestLine is one request line of the controller's log.
type requestLine struct {
	Time     time.Time `json:"time"`
	Msg      string    `json:"msg"`
	Route    string    `json:"route"`
	Status   int       `json:"status"`
	Remote   string    `json:"remote"`
	Duration float64   `json:"duration_ms"`
}

// controllerRequests returns the controller's log lines of requests to
// route since a time.
func controllerRequests(t *testing.T, l *Lab, route string, since time.Time) []requestLine {
	t.Helper()
	f, err := os.Open(l.LogPath(controllerName))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []requestLine
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var r requestLine
		if json.Unmarshal(sc.Bytes(), &r) == nil && r.Msg == "request" && r.Route == route && !r.Time.Before(since) {
			out = append(out, r)
		}
	}
	return out
}

// fromSite counts the requests that came from one of the site's
// appliances' uplink addresses.
func fromSite(l *Lab, reqs []requestLine, site string) int {
	addrs := map[string]bool{}
	for _, a := range siteAppliances(l, site) {
		for _, u := range a.Uplinks {
			addrs[u.Addr] = true
		}
	}
	n := 0
	for _, r := range reqs {
		if ap, err := netip.ParseAddrPort(r.Remote); err == nil && addrs[ap.Addr().String()] {
			n++
		}
	}
	return n
}

// checkOthersStill fails for every sum of the ledger, other than those in
// moved, that changed between before and after.
func checkOthersStill(t *testing.T, before, after ledgerView, moved ...ledgerKey) {
	t.Helper()
	keys := map[ledgerKey]bool{}
	for k := range before.sums {
		keys[k] = true
	}
	for k := range after.sums {
		keys[k] = true
	}
	for k := range keys {
		if slices.Contains(moved, k) {
			continue
		}
		if d := after.sums[k].minus(before.sums[k]); d != (usageSum{}) {
			t.Errorf("%s grew by %d bytes, %d packets, with no traffic of its own", k, d.Bytes, d.Packets)
		}
	}
}

// TestMeteringReconcile checks metered bytes against independent counters
// on the real lab: overlay traffic between two sites (and its underlay
// bytes on the Internet router, with the encapsulation overhead), Internet
// traffic through office-1's gateway, a lab doing nothing but its own
// control-plane work, and a tenant without a billing customer.
func TestMeteringReconcile(t *testing.T) {
	t.Parallel()
	m, ctx := newMeterLab(t, "mrec", 4*time.Minute)
	l, rcv := m.Lab, m.rcv
	atDst := addCounter(t, l, m.dstHost, "in", nftables.ChainHookInput, udpPort(true, meterTestPort))

	t.Run("overlay", func(t *testing.T) {
		vpc := siteAppliances(l, "vpc-1")
		if len(vpc) != 1 {
			t.Fatalf("vpc-1 has %d appliances, want 1", len(vpc))
		}
		// inet's link to vpc-1's appliance is named after it. The
		// flow's packets are all 300 bytes or more on the underlay;
		// probes (76), keepalives (60) and handshakes (92, 148) are
		// not.
		toVPC := outIface(vpc[0].Name)
		wg := udpPort(true, listenPort)
		underlay := addCounter(t, l, "inet", "flow", nftables.ChainHookForward, toVPC, wg, ipLenAtLeast(256))
		all := addCounter(t, l, "inet", "all", nftables.ChainHookForward, toVPC, wg)
		mtu := overlayMTU(t, l, siteAppliances(l, "office-1")[0].Name)
		before := waitQuiet(ctx, t, l)
		rcvBefore, _ := rcv.counts()
		c := m.dial(t)
		start := time.Now()
		sent := sendUDP(c, 0, 6000, varied, 2000)
		t.Logf("sent %d datagrams, %d IP bytes, from %s to %s in %v", sent.Packets, sent.Bytes, m.srcHost, m.dst, time.Since(start).Round(time.Millisecond))
		time.Sleep(200 * time.Millisecond)
		got := m.received(rcvBefore)
		counted := atDst.read(t)
		after := waitLedger(ctx, t, l, func(v ledgerView) bool {
			return v.sums[flowTx].minus(before.sums[flowTx]).Packets >= sent.Packets &&
				v.sums[flowRx].minus(before.sums[flowRx]).Packets >= got.Packets
		}, func(v ledgerView) string {
			return fmt.Sprintf("%s %+v, %s %+v; sent %+v, received %+v", flowTx, v.sums[flowTx].minus(before.sums[flowTx]),
				flowRx, v.sums[flowRx].minus(before.sums[flowRx]), sent.usageSum, got)
		})
		tx, rx := after.sums[flowTx].minus(before.sums[flowTx]), after.sums[flowRx].minus(before.sums[flowRx])
		reconcile(t, "office-1 overlay tx to vpc-1 (bytes), against the bytes sent", tx.Bytes, sent.Bytes)
		reconcile(t, "office-1 overlay tx to vpc-1 (packets), against the datagrams sent", tx.Packets, sent.Packets)
		reconcile(t, "vpc-1 overlay rx from office-1 (bytes), against the bytes the receiving socket got", rx.Bytes, got.Bytes)
		reconcile(t, "vpc-1 overlay rx from office-1 (packets), against the datagrams the receiving socket got", rx.Packets, got.Packets)
		// The appliance hands datagrams to the kernel coalesced (UDP
		// GSO through the TUN), and the host's input hook sees some of
		// them still as one packet of several datagrams with one header:
		// 28 bytes less for each datagram merged into another.
		merged := got.Packets - counted.Packets
		t.Logf("the receiving host's nftables counter: %d packets, %d bytes: %d datagrams arrived merged into others", counted.Packets, counted.Bytes, merged)
		reconcile(t, "vpc-1 overlay rx from office-1 (bytes), against the receiving host's nftables counter + 28 per merged datagram",
			rx.Bytes, counted.Bytes+28*merged)

		// The underlay: per packet as documented, and from the ledger's
		// bytes and packets with the average padding of 7.5.
		var exact int64
		for _, n := range sent.lens {
			exact += underlayBytes(n, mtu)
		}
		wire := underlay.read(t)
		background := all.read(t).minus(wire)
		approx := tx.Bytes + int64(math.Round(float64(tx.Packets)*(60+7.5)))
		t.Logf("underlay towards vpc-1 on inet: %d packets, %d bytes of the flow; %d packets, %d bytes of probes, keepalives and handshakes besides",
			wire.Packets, wire.Bytes, background.Packets, background.Bytes)
		reconcile(t, "underlay bytes, sum of 32 + min(16·⌈L/16⌉, MTU) + 28 over the datagrams sent, against inet's counter", exact, wire.Bytes)
		reconcile(t, "underlay bytes, ledger bytes + packets·67.5, against inet's counter", approx, wire.Bytes)
		reconcile(t, "underlay packets of the flow, against the datagrams sent", wire.Packets, sent.Packets)
		checkOthersStill(t, before, after, flowTx, flowRx)
	})

	t.Run("gateway", func(t *testing.T) {
		echo := netip.AddrPortFrom(webAddr, webEchoPort)
		toWeb := addCounter(t, l, "web-1", "in", nftables.ChainHookInput, udpPort(true, webEchoPort))
		fromWeb := addCounter(t, l, "web-1", "out", nftables.ChainHookOutput, udpPort(false, webEchoPort))
		before := waitQuiet(ctx, t, l)
		c := udpDial(t, l.Netns(m.srcHost), "", echo.String())
		var echoed usageSum
		var mu sync.Mutex
		done := make(chan struct{})
		go func() {
			defer close(done)
			buf := make([]byte, 2048)
			for {
				n, err := c.Read(buf)
				if err != nil {
					return
				}
				mu.Lock()
				echoed.Packets++
				echoed.Bytes += int64(n + 28)
				mu.Unlock()
			}
		}()
		// Up to 1400 bytes of payload: the LAN's MTU is 1500.
		sent := sendUDP(c, 0, 3000, func(i int) int { return 100 + (i*53)%1301 }, 1000)
		time.Sleep(300 * time.Millisecond)
		c.SetReadDeadline(time.Now())
		<-done
		in, out := toWeb.read(t), fromWeb.read(t)
		gtx := ledgerKey{"office-1", appliance.MeterGateway, appliance.DirTx, ""}
		grx := ledgerKey{"office-1", appliance.MeterGateway, appliance.DirRx, ""}
		after := waitLedger(ctx, t, l, func(v ledgerView) bool {
			return v.sums[gtx].minus(before.sums[gtx]).Packets >= in.Packets && v.sums[grx].minus(before.sums[grx]).Packets >= out.Packets
		}, func(v ledgerView) string {
			return fmt.Sprintf("gateway tx %+v, rx %+v; web-1 got %+v, sent %+v", v.sums[gtx].minus(before.sums[gtx]),
				v.sums[grx].minus(before.sums[grx]), in, out)
		})
		t.Logf("office-1's site has %d appliance(s); %s sent %+v to web-1's echo, web-1 counted %+v in and %+v out, %+v came back",
			len(siteAppliances(l, "office-1")), m.srcHost, sent.usageSum, in, out, echoed)
		tx, rx := after.sums[gtx].minus(before.sums[gtx]), after.sums[grx].minus(before.sums[grx])
		reconcile(t, "office-1 gateway tx (bytes), against web-1's input counter", tx.Bytes, in.Bytes)
		reconcile(t, "office-1 gateway tx (packets), against web-1's input counter", tx.Packets, in.Packets)
		reconcile(t, "office-1 gateway rx (bytes), against web-1's output counter", rx.Bytes, out.Bytes)
		reconcile(t, "office-1 gateway rx (packets), against web-1's output counter", rx.Packets, out.Packets)
		reconcile(t, "office-1 gateway tx (bytes), against the bytes sent", tx.Bytes, sent.Bytes)
		reconcile(t, "office-1 gateway rx (bytes), against the bytes echoed back", rx.Bytes, echoed.Bytes)
		// Internet traffic is no overlay traffic.
		checkOthersStill(t, before, after, gtx, grx)
	})

	t.Run("no-self-metering", func(t *testing.T) {
		// For 12 s the only tenant traffic is a small stream from
		// office-1 to vpc-1, which keeps both shipping a record every
		// interval and the controller exporting them. Everything else
		// the lab does meanwhile (path probes, keepalives, path and usage
		// reports to the controller over office-1's uplinks, netmap
		// syncs, the export to the sink) must count nothing: office-1's
		// gateway meter, home-1 (which does nothing) and the directions
		// the stream does not take stay where they were.
		before, tot0 := waitExported(ctx, t, l)
		from := time.Now()
		c := m.dial(t)
		rcvBefore, _ := rcv.counts()
		s := streamUDP(c, 0, 100, 50*time.Millisecond)
		time.Sleep(12 * time.Second)
		sent := s.end()
		time.Sleep(200 * time.Millisecond)
		after, tot := waitExported(ctx, t, l)
		checkFlow(t, before, after, sent.usageSum, m.received(rcvBefore))
		usage := controllerRequests(t, l, "POST /api/v1/usage/report", from)
		paths := controllerRequests(t, l, "POST /api/v1/paths/report", from)
		t.Logf("in the window: usage reports %d from office-1, %d from vpc-1; path reports %d; %d events exported",
			fromSite(l, usage, "office-1"), fromSite(l, usage, "vpc-1"), len(paths), tot.Events-tot0.Events)
		for _, site := range []string{"office-1", "vpc-1"} {
			if n := fromSite(l, usage, site); n < 3 {
				t.Errorf("only %d usage reports from %s in 12 s: shipping did not run", n, site)
			}
		}
		if len(paths) < 3 {
			t.Errorf("only %d path reports in 12 s", len(paths))
		}
		if tot.Events-tot0.Events < 3 {
			t.Errorf("only %d events exported in the window", tot.Events-tot0.Events)
		}
	})

	t.Run("no-billing-customer", func(t *testing.T) {
		// The tenant loses its billing customer: its events become dead
		// letters with the reason, while ingest and the tenant's traffic
		// carry on; with the customer back, a retry delivers them.
		before, _ := waitExported(ctx, t, l)
		var tn struct {
			ID string `json:"id"`
		}
		if err := l.ctlJSON(ctx, &tn, "tenant", "update", l.Tenant(), "--billing-customer", ""); err != nil {
			t.Fatal(err)
		}
		from := time.Now()
		c := m.dial(t)
		rcvBefore, seenBefore := rcv.counts()
		s := streamUDP(c, 1<<20, 200, 20*time.Millisecond)
		time.Sleep(8 * time.Second)
		sent := s.end()
		time.Sleep(300 * time.Millisecond)
		_, seen := rcv.counts()
		if lost := sent.Packets - int64(seen-seenBefore); lost != 0 {
			t.Errorf("the stream lost %d of %d datagrams", lost, sent.Packets)
		}
		after := waitLedger(ctx, t, l, func(v ledgerView) bool {
			return v.sums[flowTx].minus(before.sums[flowTx]).Packets >= sent.Packets
		}, func(v ledgerView) string { return fmt.Sprintf("%+v", v.sums[flowTx].minus(before.sums[flowTx])) })
		checkFlow(t, before, after, sent.usageSum, m.received(rcvBefore))
		for _, r := range controllerRequests(t, l, "POST /api/v1/usage/report", from) {
			if r.Status != 200 {
				t.Errorf("a usage report was answered %d without a billing customer", r.Status)
			}
		}
		var dl struct {
			Items []struct {
				Tenant, Reason string
				Bytes          int64
			} `json:"items"`
		}
		var st meteringStatus
		for ctx.Err() == nil {
			st = readMeteringStatus(ctx, t, l)
			if st.QueueLength == 0 && st.DeadLetters > 0 {
				break
			}
			time.Sleep(250 * time.Millisecond)
		}
		if err := l.ctlJSON(ctx, &dl, "metering", "dead-letters", "--limit", "1000"); err != nil {
			t.Fatal(err)
		}
		var dead int64
		want := "no billing customer for tenant " + tn.ID + " " + l.Tenant()
		for _, it := range dl.Items {
			dead += it.Bytes
			if it.Reason != want {
				t.Errorf("dead letter reason %q, want %q", it.Reason, want)
			}
		}
		var grew int64
		for k, v := range after.sums {
			grew += v.Bytes - before.sums[k].Bytes
		}
		t.Logf("%d dead letters of %d bytes (the ledger grew by %d), reason %q", len(dl.Items), dead, grew, want)
		if int64(len(dl.Items)) != st.DeadLetters || dead != grew {
			t.Errorf("%d dead letters (status: %d) of %d bytes; the ledger grew by %d bytes meanwhile", len(dl.Items), st.DeadLetters, dead, grew)
		}
		out, err := l.Ctl(ctx, "metering", "dead-letters")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, want) {
			t.Errorf("ctl metering dead-letters does not give the reason:\n%s", out)
		}
		if err := l.ctlJSON(ctx, &tn, "tenant", "update", l.Tenant(), "--billing-customer", BillingCustomer); err != nil {
			t.Fatal(err)
		}
		if _, err := l.Ctl(ctx, "metering", "retry", "--all"); err != nil {
			t.Fatal(err)
		}
		_, tot := waitExported(ctx, t, l)
		checkSinkEvents(ctx, t, l, tot)
	})
}

// TestMeteringOutage stops the metering API (the meter sink's process) for
// two minutes under traffic: the tenant's stream loses nothing, the
// appliances keep reporting and the controller keeps its ledger; once the
// sink is back, the controller delivers what queued up, and the sink's
// sums equal the ledger's, every event stored once.
func TestMeteringOutage(t *testing.T) {
	t.Parallel()
	m, ctx := newMeterLab(t, "mout", 5*time.Minute)
	l, rcv := m.Lab, m.rcv
	const outage = 2 * time.Minute
	before, _ := waitExported(ctx, t, l)

	s := streamUDP(m.dial(t), 0, 200, 20*time.Millisecond)
	time.Sleep(3 * time.Second)
	if err := l.StopMeterSink(); err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	var maxQueue int64
	var lastErr string
	during := before
	for time.Since(down) < outage {
		time.Sleep(5 * time.Second)
		st := readMeteringStatus(ctx, t, l)
		if st.DeadLetters > 0 {
			t.Fatalf("%d dead letters during the outage: %s", st.DeadLetters, deadLetterReasons(ctx, t, l))
		}
		maxQueue, lastErr = max(maxQueue, st.QueueLength), st.LastError
		during = mustLedger(ctx, t, l)
	}
	if err := l.StartMeterSink(ctx); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	t.Logf("the meter sink was down for %v; the outbox grew to %d events; last error %q", back.Sub(down).Round(time.Second), maxQueue, lastErr)
	time.Sleep(3 * time.Second)
	sent := s.end()
	time.Sleep(300 * time.Millisecond)
	got, seen := rcv.counts()
	after, tot := waitExported(ctx, t, l)
	checkFlow(t, before, after, sent.usageSum, got)
	t.Logf("the sink holds the ledger %v after it came back (%v of that waiting for the ledger to settle); %d events, %d copies received",
		time.Since(back).Round(100*time.Millisecond), UsageInterval+time.Second, tot.Events, tot.Duplicates)
	checkSinkEvents(ctx, t, l, tot)
	if lost := sent.Packets - int64(seen); lost != 0 {
		t.Errorf("the stream lost %d of %d datagrams during the outage", lost, sent.Packets)
	}
	if d := during.sums[flowTx].minus(before.sums[flowTx]); d.Packets < int64(outage/(20*time.Millisecond))*9/10 {
		t.Errorf("the ledger grew by only %+v during the outage: ingest stalled", d)
	}
	if maxQueue == 0 || !strings.Contains(lastErr, "sending") {
		t.Errorf("the outage did not show: queue at most %d, last error %q", maxQueue, lastErr)
	}
}

// TestMeteringFailures runs the export through a metering API that
// answers 500, 429 and malformed answers, a controller killed while
// events wait in its outbox and some of them are stored at the sink
// already, and an appliance restarted while it cannot reach the
// controller: at the end of each, the sink's sums equal the ledger, which
// equals the traffic, every event stored once.
func TestMeteringFailures(t *testing.T) {
	t.Parallel()
	m, ctx := newMeterLab(t, "mfail", 4*time.Minute)
	l, rcv := m.Lab, m.rcv
	var seq uint32
	t.Run("faults", func(t *testing.T) {
		before, _ := waitExported(ctx, t, l)
		rcvBefore, seenBefore := rcv.counts()
		s := streamUDP(m.dial(t), seq, 200, 20*time.Millisecond)
		seq += 1 << 20
		st0 := readMeteringStatus(ctx, t, l)
		for _, f := range []struct {
			fault MeterSinkFault
			grew  func(a, b meteringStatus) bool
		}{
			{MeterSinkFault{Mode: sink.Fault500}, func(a, b meteringStatus) bool { return b.Retried > a.Retried }},
			{MeterSinkFault{Mode: sink.Fault429, RetryAfter: "2"}, func(a, b meteringStatus) bool { return b.Throttled > a.Throttled }},
			{MeterSinkFault{Mode: sink.FaultMalformed}, func(a, b meteringStatus) bool { return b.Retried > a.Retried }},
			{MeterSinkFault{Mode: sink.FaultGarbage}, func(a, b meteringStatus) bool { return b.Retried > a.Retried }},
		} {
			a := readMeteringStatus(ctx, t, l)
			f.fault.For = 6 * time.Second
			if err := l.SetMeterSinkFault(ctx, f.fault); err != nil {
				t.Fatal(err)
			}
			time.Sleep(f.fault.For)
			b := readMeteringStatus(ctx, t, l)
			t.Logf("fault %s for %v: retried %d, throttled %d, last error %q", f.fault.Mode, f.fault.For,
				b.Retried-a.Retried, b.Throttled-a.Throttled, b.LastError)
			if !f.grew(a, b) {
				t.Errorf("fault %s: the controller did not see it (retried %d, throttled %d)", f.fault.Mode, b.Retried-a.Retried, b.Throttled-a.Throttled)
			}
		}
		if err := l.SetMeterSinkFault(ctx, MeterSinkFault{}); err != nil {
			t.Fatal(err)
		}
		sent := s.end()
		time.Sleep(300 * time.Millisecond)
		after, tot := waitExported(ctx, t, l)
		st := readMeteringStatus(ctx, t, l)
		t.Logf("after the faults: retried %d, throttled %d, sent %d; the sink holds %d events", st.Retried-st0.Retried,
			st.Throttled-st0.Throttled, st.Sent-st0.Sent, tot.Events)
		checkSinkEvents(ctx, t, l, tot)
		checkFlow(t, before, after, sent.usageSum, m.received(rcvBefore))
		if _, seen := rcv.counts(); int64(seen-seenBefore) != sent.Packets {
			t.Errorf("the stream lost %d of %d datagrams", sent.Packets-int64(seen-seenBefore), sent.Packets)
		}
	})

	t.Run("controller-killed-mid-export", func(t *testing.T) {
		before, tot0 := waitExported(ctx, t, l)
		rcvBefore, _ := rcv.counts()
		s := streamUDP(m.dial(t), seq, 200, 20*time.Millisecond)
		seq += 1 << 20
		// The sink stores what it gets and answers 500: the controller
		// keeps the events in its outbox and sends them again.
		if err := l.SetMeterSinkFault(ctx, MeterSinkFault{Mode: sink.FaultLostAnswer}); err != nil {
			t.Fatal(err)
		}
		var queued int64
		for ctx.Err() == nil {
			st := readMeteringStatus(ctx, t, l)
			_, tot, err := readSink(ctx, l)
			if err != nil {
				t.Fatal(err)
			}
			if st.QueueLength > 0 && tot.Events > tot0.Events && tot.Duplicates > tot0.Duplicates {
				queued = st.QueueLength
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if queued == 0 {
			t.Fatal("the sink never stored events that the controller still had in its outbox")
		}
		if err := l.KillController(); err != nil {
			t.Fatal(err)
		}
		if err := l.SetMeterSinkFault(ctx, MeterSinkFault{}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second)
		if err := l.StartController(ctx); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * time.Second)
		sent := s.end()
		time.Sleep(300 * time.Millisecond)
		after, tot := waitExported(ctx, t, l)
		t.Logf("killed the controller with %d events in its outbox, some stored at the sink already; after the restart the sink holds %d new events, %d copies received",
			queued, tot.Events-tot0.Events, tot.Duplicates-tot0.Duplicates)
		checkSinkEvents(ctx, t, l, tot)
		checkFlow(t, before, after, sent.usageSum, m.received(rcvBefore))
	})

	t.Run("appliance-restarted-mid-spool", func(t *testing.T) {
		// vpc-1's appliance receives; the controller is cut off from
		// the Internet, so both ends spool; vpc-1 restarts gracefully in
		// between; then the controller is reachable again.
		vpc := siteAppliances(l, "vpc-1")
		if len(vpc) != 1 {
			t.Fatalf("vpc-1 has %d appliances, want 1", len(vpc))
		}
		name := vpc[0].Name
		spooled := func(ok func(float64) bool) float64 {
			t.Helper()
			m := waitMetric(ctx, t, l, name, func(m map[string]float64) bool { return ok(m["causeway_usage_spool_records"]) })
			return m["causeway_usage_spool_records"]
		}
		before, _ := waitExported(ctx, t, l)
		rcvBefore, _ := rcv.counts()
		if err := l.Impair(ctx, controllerNode(l), "eth0", Impairment{Down: true}); err != nil {
			t.Fatal(err)
		}
		defer l.Clear(controllerNode(l), "eth0")
		c := m.dial(t)
		sent := sendUDP(c, seq, 1000, varied, 500)
		seq += 1 << 20
		n1 := spooled(func(n float64) bool { return n > 0 })
		if err := l.StopAppliance(name); err != nil {
			t.Fatal(err)
		}
		if err := l.StartAppliance(ctx, name); err != nil {
			t.Fatal(err)
		}
		n2 := spooled(func(n float64) bool { return n > 0 })
		// The tunnel towards the restarted appliance: office-1 still
		// holds the old session, which vpc-1 has forgotten, and starts a
		// new handshake only once its data has gone unanswered for 15 s
		// (WireGuard's keepalive and rekey timeouts). What it sends
		// until then is counted as sent and lost on the way.
		restarted := time.Now()
		warm, _ := rcv.counts()
		for range 300 {
			sent.add(sendUDP(c, seq, 1, varied, 1000))
			seq++
			time.Sleep(100 * time.Millisecond)
			if g, _ := rcv.counts(); g.Packets > warm.Packets {
				break
			}
		}
		t.Logf("datagrams reach the restarted %s again %v after its start", name, time.Since(restarted).Round(100*time.Millisecond))
		sent.add(sendUDP(c, seq, 1000, varied, 500))
		seq += 1 << 20
		n3 := spooled(func(n float64) bool { return n > n2 })
		t.Logf("%s spooled %v records, restarted with %v in its spool, then %v; the controller unreachable all along", name, n1, n2, n3)
		if n2 < n1 {
			t.Errorf("%s came back with %v records in its spool, had %v before it stopped", name, n2, n1)
		}
		cleared := time.Now()
		if err := l.Clear(controllerNode(l), "eth0"); err != nil {
			t.Fatal(err)
		}
		after, tot := waitExported(ctx, t, l)
		t.Logf("the sink holds the ledger %v after the controller became reachable", time.Since(cleared).Round(100*time.Millisecond))
		checkSinkEvents(ctx, t, l, tot)
		checkFlow(t, before, after, sent.usageSum, m.received(rcvBefore))
	})
}

// controllerNode is the node the controller runs on.
func controllerNode(l *Lab) string {
	return l.t.controller.node
}
