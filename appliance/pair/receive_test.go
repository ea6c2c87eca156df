package pair

import (
	"log/slog"
	"net/netip"
	"testing"
	"time"
)

// TestReceiveRejects feeds authentic heartbeats to the loop directly and
// checks which are believed.
func TestReceiveRejects(t *testing.T) {
	cfg, err := validConfig().withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	m := &Member{cfg: cfg, log: slog.New(slog.DiscardHandler)}
	now := time.Now()
	l := newLoop(m, now)
	lanSrc := netip.AddrPortFrom(cfg.PartnerLANAddr, cfg.HeartbeatPort)
	wanSrc := cfg.PartnerWANAddr
	hb := func(ch Channel, name string, boot, seq, term uint64) heartbeat {
		return heartbeat{Channel: ch, Role: RoleActive, Name: name, Boot: boot, Seq: seq, Term: term, Priority: 7}
	}
	steps := []struct {
		what     string
		ch       Channel
		from     netip.AddrPort
		hb       heartbeat
		after    time.Duration
		accepted bool
		term     uint64 // the partner's term afterwards
	}{
		{"first heartbeat", ChannelLAN, lanSrc, hb(ChannelLAN, "b", 100, 1, 3), 0, true, 3},
		{"same round on the WAN", ChannelWAN, wanSrc, hb(ChannelWAN, "b", 100, 1, 3), 0, true, 3},
		{"replay on the LAN", ChannelLAN, lanSrc, hb(ChannelLAN, "b", 100, 1, 3), 0, false, 3},
		{"next round", ChannelLAN, lanSrc, hb(ChannelLAN, "b", 100, 2, 4), 0, true, 4},
		{"a late WAN round does not roll back", ChannelWAN, wanSrc, hb(ChannelWAN, "b", 100, 1, 3), 0, false, 4},
		{"an older WAN round after a newer", ChannelWAN, wanSrc, hb(ChannelWAN, "b", 100, 2, 4), 0, true, 4},
		{"own name", ChannelLAN, lanSrc, hb(ChannelLAN, cfg.Name, 100, 9, 9), 0, false, 4},
		{"LAN heartbeat on the WAN socket", ChannelWAN, wanSrc, hb(ChannelLAN, "b", 100, 3, 9), 0, false, 4},
		{"wrong source", ChannelLAN, netip.MustParseAddrPort("10.10.0.99:51830"), hb(ChannelLAN, "b", 100, 3, 9), 0, false, 4},
		{"a third member", ChannelLAN, lanSrc, hb(ChannelLAN, "c", 100, 3, 9), 0, false, 4},
		{"an earlier incarnation", ChannelLAN, lanSrc, hb(ChannelLAN, "b", 99, 50, 9), 0, false, 4},
		{"a later incarnation", ChannelLAN, lanSrc, hb(ChannelLAN, "b", 101, 1, 5), 0, true, 5},
		{"the old one on the WAN is late", ChannelWAN, wanSrc, hb(ChannelWAN, "b", 100, 3, 9), 0, true, 5},
		{"after silence, a lower boot is a new start", ChannelLAN, lanSrc, hb(ChannelLAN, "b", 7, 1, 6), time.Second, true, 6},
	}
	at := now
	for _, s := range steps {
		at = at.Add(s.after + time.Millisecond)
		before := m.ctr.ch[s.ch].recv.Load()
		l.receive(received{ch: s.ch, hb: s.hb, from: s.from, at: at})
		got := m.ctr.ch[s.ch].recv.Load() > before
		if got != s.accepted || l.peer.view.term != s.term {
			t.Errorf("%s: accepted %v (want %v), partner term %d (want %d)", s.what, got, s.accepted, l.peer.view.term, s.term)
		}
	}
	if r := m.ctr.ch[ChannelLAN].rejected.Load() + m.ctr.ch[ChannelWAN].rejected.Load(); r != 7 {
		t.Errorf("%d rejected, want 7", r)
	}
}

// TestStallGrace: a silence noticed on time kills the partner at once; one
// noticed late (the member itself was stalled) waits one interval for the
// heartbeats that may be queued.
func TestStallGrace(t *testing.T) {
	cfg, err := validConfig().withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	src := netip.AddrPortFrom(cfg.PartnerLANAddr, cfg.HeartbeatPort)
	for _, late := range []bool{false, true} {
		m := &Member{cfg: cfg, log: slog.New(slog.DiscardHandler)}
		now := time.Now()
		l := newLoop(m, now)
		l.receive(received{ch: ChannelLAN, hb: heartbeat{Channel: ChannelLAN, Role: RoleActive, Name: "b", Boot: 1, Seq: 1},
			from: src, at: now})
		l.updatePeer(now)
		if !l.peer.alive {
			t.Fatal("not alive after a heartbeat")
		}
		noticed := now.Add(cfg.DeadAfter + 10*time.Millisecond)
		if late {
			noticed = now.Add(cfg.DeadAfter + 3*cfg.Interval)
		}
		l.updatePeer(noticed)
		if l.peer.alive != late {
			t.Fatalf("late %v: alive %v when the silence was noticed", late, l.peer.alive)
		}
		if late {
			if d := l.peerDeadline(); !d.Equal(noticed.Add(cfg.Interval)) {
				t.Fatalf("deadline %v, want the end of the grace %v", d, noticed.Add(cfg.Interval))
			}
			l.updatePeer(noticed.Add(cfg.Interval))
			if l.peer.alive {
				t.Fatal("still alive after the grace")
			}
		}
	}
}
