package pair

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// garpSchedule is when the gratuitous ARPs of a takeover go out, after the
// VIP is added: at once, then again in case the first met a busy switch or
// host.
var garpSchedule = []time.Duration{0, 50 * time.Millisecond, 250 * time.Millisecond, time.Second}

// lanLink is the LAN interface as the member uses it: the VIP, the carrier
// and gratuitous ARP.
type lanLink interface {
	// addVIP adds the VIP, or refreshes it, with the given valid lifetime.
	addVIP(lease time.Duration) error
	// delVIP removes the VIP; no VIP is no error.
	delVIP() error
	// up reports whether the interface is up with a carrier.
	up() (bool, error)
	// garp sends one gratuitous ARP for the VIP.
	garp() error
	close() error
}

// Member is one running member of a PAIR. Its methods are safe for
// concurrent use.
type Member struct {
	cfg  Config
	log  *slog.Logger
	keys atomic.Pointer[keySet]
	boot uint64

	lan, wan       *net.UDPConn
	lanDst, wanDst netip.AddrPort
	link           lanLink
	vipLease       time.Duration
	ml             *memberlist.Memberlist
	keyring        *memberlist.Keyring
	meta           atomic.Pointer[[]byte]
	metaDirty      chan struct{}

	rx   chan received
	cmds chan func(*loop)
	mlEv chan mlEvent
	stop chan struct{}
	quit chan struct{} // the loop ended: its goroutines and callers stop waiting for it
	done chan struct{} // everything is released and closeErr is set
	bg   sync.WaitGroup

	closeOnce sync.Once
	closeErr  error

	mu    sync.Mutex
	state State

	ctr    counters
	notify *notifier
}

type counters struct {
	ch        [3]chanCounters // by Channel
	failovers [numReasons]atomic.Uint64
	garp      atomic.Uint64
	vipErr    atomic.Uint64
}

type chanCounters struct{ sent, sendErr, recv, bad, rejected atomic.Uint64 }

type received struct {
	ch   Channel
	hb   heartbeat
	from netip.AddrPort
	at   time.Time
}

// Start validates cfg, opens the heartbeat sockets, joins memberlist and
// starts the member as a standby; it claims the active role when the rules
// say so (docs/pair.md). It must run in the network namespace of the LAN
// and WAN interfaces, and the whole process should live there: memberlist
// opens connections from goroutines of its own. The member runs until
// Close is called or ctx is done; both release the VIP.
//
// A VIP left on the LAN interface by a previous run that did not stop
// cleanly is removed first.
func Start(ctx context.Context, cfg Config) (*Member, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	m := &Member{
		cfg:       cfg,
		log:       cfg.Log.With("pair", cfg.Name),
		lanDst:    netip.AddrPortFrom(cfg.PartnerLANAddr, cfg.HeartbeatPort),
		wanDst:    cfg.PartnerWANAddr,
		vipLease:  leaseFor(cfg.DeadAfter),
		metaDirty: make(chan struct{}, 1),
		rx:        make(chan received, 64),
		cmds:      make(chan func(*loop)),
		mlEv:      make(chan mlEvent, 16),
		stop:      make(chan struct{}),
		quit:      make(chan struct{}),
		done:      make(chan struct{}),
		notify:    newNotifier(cfg.OnChange),
	}
	m.keys.Store(newKeySet(cfg.Key, cfg.AcceptedKeys))
	var b [8]byte
	rand.Read(b[:])
	// The boot number orders incarnations: the clock, with random low bits
	// so that two starts within a microsecond still differ.
	m.boot = uint64(time.Now().UnixMicro())<<10 | uint64(binary.BigEndian.Uint16(b[:])&0x3ff)

	undo := func(err error) (*Member, error) {
		m.closeSockets()
		if m.link != nil {
			m.link.close()
		}
		m.notify.close()
		return nil, err
	}
	if m.link, err = openLANLink(cfg.LANInterface, cfg.VIP); err != nil {
		return undo(err)
	}
	if err := m.link.delVIP(); err != nil {
		return undo(fmt.Errorf("pair: removing a stale VIP %v from %s: %w", cfg.VIP, cfg.LANInterface, err))
	}
	if m.lan, err = listenPinned(cfg.LANInterface, netip.AddrPortFrom(cfg.LANAddr, cfg.HeartbeatPort)); err != nil {
		return undo(fmt.Errorf("pair: LAN heartbeat socket: %w", err))
	}
	if m.wan, err = listenPinned(cfg.WANInterface, cfg.WANAddr); err != nil {
		return undo(fmt.Errorf("pair: WAN heartbeat socket: %w", err))
	}
	l := newLoop(m, time.Now())
	m.setMeta(l)
	if err := m.startMemberlist(); err != nil {
		return undo(fmt.Errorf("pair: memberlist on %v:%d: %w", cfg.LANAddr, cfg.MemberlistPort, err))
	}
	m.publish(l, time.Now())

	m.bg.Add(2)
	go m.read(ChannelLAN, m.lan)
	go m.read(ChannelWAN, m.wan)
	go l.run()
	go func() {
		select {
		case <-ctx.Done():
			m.Close()
		case <-m.done:
		}
	}()
	m.log.Info("pair member started", "priority", cfg.Priority, "preempt", cfg.Preempt, "vip", cfg.VIP,
		"lan", cfg.LANInterface, "wan", cfg.WANInterface, "interval", cfg.Interval, "dead_after", cfg.DeadAfter)
	return m, nil
}

// leaseFor is the valid lifetime the VIP is added with and refreshed to:
// if the process dies or hangs, the kernel removes the address itself a few
// seconds later (the partner has taken over after DeadAfter).
func leaseFor(deadAfter time.Duration) time.Duration {
	l := 4 * deadAfter
	if l < 3*time.Second {
		l = 3 * time.Second
	}
	return l.Truncate(time.Second)
}

// State returns the member's current view of the pair.
func (m *Member) State() State {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.state
	if s.LastFailover != nil {
		f := *s.LastFailover
		s.LastFailover = &f
	}
	return s
}

// SetPriority changes this member's priority (0-65535). With Preempt, a
// standby that now has the higher priority takes the role after HoldDown.
func (m *Member) SetPriority(p int) error {
	if p < 0 || p > MaxPriority {
		return &ConfigError{Field: "Priority", Msg: fmt.Sprintf("want 0-%d, got %d", MaxPriority, p)}
	}
	return m.do(func(l *loop) { l.self.prio = p })
}

// Drain takes this member out of the election (on) or puts it back. A
// drained active keeps the VIP until the partner has claimed it (make
// before break), and keeps it if there is no partner that can take it.
func (m *Member) Drain(on bool) error {
	return m.do(func(l *loop) {
		if l.drained != on {
			l.drained = on
			l.log().Info("pair drain", "drained", on)
		}
	})
}

// SetKeys replaces the heartbeat and memberlist keys while the member
// runs: key signs from now on, and heartbeats and gossip under key or any
// of accepted are accepted (a key rotation, see Config.AcceptedKeys).
func (m *Member) SetKeys(key []byte, accepted ...[]byte) error {
	if err := checkKeys(key, accepted); err != nil {
		return err
	}
	ks := newKeySet(key, accepted)
	m.keys.Store(ks)
	if m.keyring == nil {
		return nil
	}
	// Add first, then switch, then drop what is no longer wanted: gossip
	// under either key keeps working throughout.
	for _, k := range ks.gossip {
		if err := m.keyring.AddKey(k); err != nil {
			return fmt.Errorf("pair: memberlist key: %w", err)
		}
	}
	if err := m.keyring.UseKey(ks.gossip[0]); err != nil {
		return fmt.Errorf("pair: memberlist key: %w", err)
	}
	for _, k := range m.keyring.GetKeys() {
		if !slices.ContainsFunc(ks.gossip, func(g []byte) bool { return bytes.Equal(g, k) }) {
			m.keyring.RemoveKey(k)
		}
	}
	return nil
}

// keySet is the keys derived from Config.Key (first) and AcceptedKeys.
type keySet struct {
	sign   macKey
	verify []macKey // sign first
	gossip [][]byte // memberlist's keys, the primary first
}

func newKeySet(key []byte, accepted [][]byte) *keySet {
	ks := &keySet{}
	for i, k := range append([][]byte{key}, accepted...) {
		mk := macKey(deriveKey(k, "heartbeat v1"))
		if i == 0 {
			ks.sign = mk
		}
		ks.verify = append(ks.verify, mk)
		g := deriveKey(k, "memberlist v1")
		ks.gossip = append(ks.gossip, g[:])
	}
	return ks
}

// parse is parseHeartbeat under any of the keys.
func (ks *keySet) parse(b []byte) (heartbeat, error) {
	var hb heartbeat
	var err error
	for i := range ks.verify {
		if hb, err = parseHeartbeat(b, &ks.verify[i]); !errors.Is(err, errBadMAC) {
			break
		}
	}
	return hb, err
}

// ErrClosed is returned by the methods of a closed Member.
var ErrClosed = errors.New("pair: member closed")

// do runs fn on the loop and waits until the loop has acted on it.
func (m *Member) do(fn func(*loop)) error {
	applied := make(chan struct{})
	select {
	case m.cmds <- func(l *loop) { fn(l); close(applied) }:
	case <-m.quit:
		return ErrClosed
	}
	select {
	case <-applied:
		return nil
	case <-m.quit:
		return ErrClosed
	}
}

// Metrics returns a snapshot of the member's counters.
func (m *Member) Metrics() Metrics {
	s := Metrics{Failovers: map[Reason]uint64{}, GARPSent: m.ctr.garp.Load(), VIPErrors: m.ctr.vipErr.Load()}
	for _, r := range Reasons() {
		s.Failovers[r] = m.ctr.failovers[r].Load()
	}
	for ch, dst := range map[Channel]*ChannelMetrics{ChannelLAN: &s.LAN, ChannelWAN: &s.WAN} {
		c := &m.ctr.ch[ch]
		*dst = ChannelMetrics{Sent: c.sent.Load(), SendErrors: c.sendErr.Load(), Received: c.recv.Load(),
			Bad: c.bad.Load(), Rejected: c.rejected.Load()}
	}
	return s
}

// Close hands the role over if this member is active and the partner can
// take it (waiting up to 4 * DeadAfter for the partner's claim), removes the
// VIP, tells the partner it stopped, leaves memberlist and releases
// everything. It is safe to call more than once.
func (m *Member) Close() error {
	m.closeOnce.Do(func() { close(m.stop) })
	<-m.done
	return m.closeErr
}

// read receives the heartbeats of one channel until the socket is closed.
func (m *Member) read(ch Channel, c *net.UDPConn) {
	defer m.bg.Done()
	buf := make([]byte, 2048)
	ctr := &m.ctr.ch[ch]
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			m.log.Debug("pair heartbeat read", "channel", ch, "err", err)
			continue
		}
		hb, err := m.keys.Load().parse(buf[:n])
		if err != nil {
			ctr.bad.Add(1)
			m.log.Debug("pair heartbeat dropped", "channel", ch, "from", from, "err", err)
			continue
		}
		select {
		case m.rx <- received{ch: ch, hb: hb, from: from, at: time.Now()}:
		case <-m.quit:
			return
		}
	}
}

func (m *Member) send(ch Channel, hb *heartbeat, buf []byte) []byte {
	c, dst := m.lan, m.lanDst
	if ch == ChannelWAN {
		c, dst = m.wan, m.wanDst
	}
	hb.Channel = ch
	buf = appendHeartbeat(buf[:0], hb, &m.keys.Load().sign)
	ctr := &m.ctr.ch[ch]
	if _, err := c.WriteToUDPAddrPort(buf, dst); err != nil {
		if ctr.sendErr.Add(1)%100 == 1 {
			m.log.Debug("pair heartbeat send", "channel", ch, "to", dst, "err", err)
		}
	} else {
		ctr.sent.Add(1)
	}
	return buf
}

func (m *Member) closeSockets() {
	for _, c := range []*net.UDPConn{m.lan, m.wan} {
		if c != nil {
			c.Close()
		}
	}
}

// publish stores the loop's view for State and queues OnChange when the
// role, the active member or the term changed.
func (m *Member) publish(l *loop, now time.Time) {
	s := l.snapshot(now)
	m.mu.Lock()
	prev := m.state
	m.state = s
	m.mu.Unlock()
	if prev.Role != s.Role || prev.Active != s.Active || prev.Term != s.Term {
		m.notify.push(s)
	}
}

// notifier calls OnChange in order from one goroutine, so a slow callback
// never holds up the loop.
type notifier struct {
	fn    func(State)
	mu    sync.Mutex
	queue []State
	wake  chan struct{}
	done  chan struct{}
}

func newNotifier(fn func(State)) *notifier {
	n := &notifier{fn: fn, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go n.run()
	return n
}

func (n *notifier) push(s State) {
	if n.fn == nil {
		return
	}
	n.mu.Lock()
	n.queue = append(n.queue, s)
	n.mu.Unlock()
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

func (n *notifier) run() {
	defer close(n.done)
	for range n.wake {
		for {
			n.mu.Lock()
			q := n.queue
			n.queue = nil
			n.mu.Unlock()
			if len(q) == 0 {
				break
			}
			for _, s := range q {
				n.fn(s)
			}
		}
	}
}

// close delivers what is queued and ends the goroutine.
func (n *notifier) close() {
	close(n.wake)
	<-n.done
}
