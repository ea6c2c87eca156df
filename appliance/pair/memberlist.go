package pair

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/hashicorp/memberlist"
)

// Memberlist runs beside the heartbeat: it finds the partner on the LAN,
// carries each member's priority, drain and term as node metadata, and
// reports a graceful leave. It does not decide liveness: with settings a
// LAN can afford its failure detection takes most of a second, and it sees
// only the LAN, where the heartbeat sees two channels within DeadAfter.

// nodeMeta is this member's memberlist metadata.
type nodeMeta struct {
	Priority int    `json:"priority"`
	Term     uint64 `json:"term"`
	Role     Role   `json:"role"`
	Drained  bool   `json:"drained"`
}

type mlEvent struct {
	name  string
	alive bool
	left  bool // it left on purpose (memberlist Leave)
}

// memberlistConfig is memberlist tuned for a cluster of two on one LAN.
func (m *Member) memberlistConfig() *memberlist.Config {
	c := memberlist.DefaultLANConfig()
	c.Name = m.cfg.Name
	c.BindAddr = m.cfg.LANAddr.String()
	c.BindPort = int(m.cfg.MemberlistPort)
	c.AdvertiseAddr = c.BindAddr
	c.AdvertisePort = c.BindPort
	c.Label = "causeway-pair"
	c.Keyring = m.keyring
	// Only the two members may talk to it.
	c.CIDRsAllowed = []net.IPNet{hostNet(m.cfg.LANAddr.AsSlice()), hostNet(m.cfg.PartnerLANAddr.AsSlice())}
	// Two nodes: nobody to ask for indirect probes, one node to gossip to.
	c.IndirectChecks = 0
	c.GossipNodes = 1
	c.ProbeInterval = 250 * time.Millisecond
	c.ProbeTimeout = 100 * time.Millisecond
	c.SuspicionMult = 2
	c.SuspicionMaxTimeoutMult = 2
	c.AwarenessMaxMultiplier = 2
	c.RetransmitMult = 2
	c.GossipInterval = 100 * time.Millisecond
	c.GossipToTheDeadTime = 5 * time.Second
	c.PushPullInterval = 10 * time.Second
	c.TCPTimeout = time.Second
	// A restarted member comes back under its name at once.
	c.DeadNodeReclaimTime = time.Second
	c.EnableCompression = false
	c.HandoffQueueDepth = 64
	c.DNSConfigPath = ""
	c.Logger = log.New(&logWriter{log: m.log}, "", 0)
	c.Delegate = (*mlDelegate)(m)
	c.Events = (*mlDelegate)(m)
	return c
}

func hostNet(ip net.IP) net.IPNet { return net.IPNet{IP: ip, Mask: net.CIDRMask(32, 32)} }

func (m *Member) startMemberlist() error {
	ks := m.keys.Load()
	kr, err := memberlist.NewKeyring(ks.gossip[1:], ks.gossip[0])
	if err != nil {
		return err
	}
	m.keyring = kr
	ml, err := memberlist.Create(m.memberlistConfig())
	if err != nil {
		return err
	}
	m.ml = ml
	m.bg.Add(2)
	go m.joinLoop()
	go m.metaLoop()
	return nil
}

// joinLoop joins the partner whenever memberlist does not count it alive.
func (m *Member) joinLoop() {
	defer m.bg.Done()
	addr := net.JoinHostPort(m.cfg.PartnerLANAddr.String(), strconv.Itoa(int(m.cfg.MemberlistPort)))
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		if m.ml.NumMembers() < 2 {
			if _, err := m.ml.Join([]string{addr}); err != nil {
				m.log.Debug("pair memberlist join", "partner", addr, "err", err)
			}
		}
		select {
		case <-m.quit:
			return
		case <-t.C:
		}
	}
}

// metaLoop re-advertises this node when its metadata changed. UpdateNode
// blocks until the update is broadcast, so it stays off the loop.
func (m *Member) metaLoop() {
	defer m.bg.Done()
	for {
		select {
		case <-m.quit:
			return
		case <-m.metaDirty:
		}
		if err := m.ml.UpdateNode(time.Second); err != nil {
			m.log.Debug("pair memberlist update", "err", err)
		}
	}
}

// setMeta stores the loop's metadata for NodeMeta.
func (m *Member) setMeta(l *loop) {
	b, _ := json.Marshal(nodeMeta{Priority: l.self.prio, Term: l.self.term, Role: l.self.role, Drained: l.drained})
	m.meta.Store(&b)
}

// updateMeta refreshes the metadata when what it carries changed.
func (l *loop) updateMeta() {
	drained := uint64(0)
	if l.drained {
		drained = 1
	}
	now := [4]uint64{uint64(l.self.prio), l.self.term, uint64(l.self.role), drained}
	if now == l.metaState {
		return
	}
	l.metaState = now
	l.m.setMeta(l)
	select {
	case l.m.metaDirty <- struct{}{}:
	default:
	}
}

func (l *loop) memberEvent(ev mlEvent) {
	if ev.name == l.m.cfg.Name {
		return
	}
	if ev.alive != l.peer.member {
		l.log().Info("pair memberlist", "partner", ev.name, "alive", ev.alive, "left", ev.left)
	}
	l.peer.member = ev.alive
	// A leave is a second signal besides the "stopped" heartbeat, which
	// could be lost: believe it when heartbeats have stopped too.
	if ev.left && time.Since(l.peer.lastSeen()) > 2*l.m.cfg.Interval && (l.peer.view.name == "" || l.peer.view.name == ev.name) {
		l.peer.view.stopped = true
	}
}

// mlDelegate is the Member seen by memberlist. Its methods run on
// memberlist's goroutines and never block.
type mlDelegate Member

func (d *mlDelegate) NodeMeta(limit int) []byte {
	if b := d.meta.Load(); b != nil && len(*b) <= limit {
		return *b
	}
	return nil
}

func (d *mlDelegate) NotifyMsg([]byte)                           {}
func (d *mlDelegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *mlDelegate) LocalState(join bool) []byte                { return nil }
func (d *mlDelegate) MergeRemoteState(buf []byte, join bool)     {}

func (d *mlDelegate) event(n *memberlist.Node, alive bool) {
	ev := mlEvent{name: n.Name, alive: alive, left: n.State == memberlist.StateLeft}
	select {
	case d.mlEv <- ev:
	default: // the loop is behind; the next event carries the news
	}
}

func (d *mlDelegate) NotifyJoin(n *memberlist.Node)   { d.event(n, true) }
func (d *mlDelegate) NotifyLeave(n *memberlist.Node)  { d.event(n, false) }
func (d *mlDelegate) NotifyUpdate(n *memberlist.Node) { d.event(n, n.State == memberlist.StateAlive) }

// logWriter sends memberlist's log lines to slog.
type logWriter struct{ log *slog.Logger }

func (w *logWriter) Write(b []byte) (int, error) {
	msg := string(bytes.TrimSpace(b))
	// Memberlist complains at every probe of a partner that is down; the
	// member's own logs say that once, so only errors rise above debug.
	level := slog.LevelDebug
	if bytes.Contains(b, []byte("[ERR]")) {
		level = slog.LevelWarn
	}
	w.log.Log(context.Background(), level, "memberlist", "msg", msg)
	return len(b), nil
}

var _ io.Writer = (*logWriter)(nil)
