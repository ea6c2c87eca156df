package pair

import (
	"errors"
	"log/slog"
	"time"
)

// loop is the member's state, owned by one goroutine: heartbeats in and
// out, the election, the VIP.
type loop struct {
	m    *Member
	self selfView
	// drained is the operator's setting; closing drains too.
	drained bool
	closing bool
	// reason is the reason of this member's last role change; heartbeats
	// carry it.
	reason Reason
	since  time.Time
	seq    uint64
	peer   peer
	last   *Failover

	nextSend  time.Time
	nextLease time.Time
	closeBy   time.Time
	garpStop  chan struct{}
	garpDone  chan struct{}
	buf       []byte
	warned    time.Time // last "memberlist sees the partner, heartbeats do not"
	metaState [4]uint64
}

// peer is what the loop knows of the partner.
type peer struct {
	view peerView
	// boot and seq of the newest heartbeat whose content was applied, and
	// when a heartbeat of that boot last arrived.
	boot, seq uint64
	bootAt    time.Time
	// per channel (index Channel): the last accepted heartbeat's arrival,
	// boot and sequence number, for liveness and replay checks.
	last   [3]time.Time
	chBoot [3]uint64
	chSeq  [3]uint64
	alive  bool
	grace  time.Time // alive until then although silent: see updatePeer
	member bool      // memberlist counts it alive
}

func newLoop(m *Member, now time.Time) *loop {
	return &loop{
		m: m,
		self: selfView{candidate: candidate{name: m.cfg.Name, prio: m.cfg.Priority, role: RoleStandby},
			started: now, eligibleSince: now},
		since:    now,
		nextSend: now,
	}
}

func (l *loop) log() *slog.Logger { return l.m.log }

func (l *loop) policy() policy {
	return policy{preempt: l.m.cfg.Preempt, holdDown: l.m.cfg.HoldDown, startupWait: l.m.cfg.DeadAfter}
}

func (l *loop) run() {
	m := l.m
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case r := <-m.rx:
			l.receive(r)
		case fn := <-m.cmds:
			fn(l)
		case ev := <-m.mlEv:
			l.memberEvent(ev)
		case <-m.stop:
			if !l.closing {
				l.closing = true
				l.closeBy = time.Now().Add(4 * m.cfg.DeadAfter)
				l.log().Info("pair member stopping", "role", l.self.role)
				l.nextSend = time.Now() // announce "drained" at once
			}
		case <-timer.C:
		}
		now := time.Now()
		wake := l.step(now)
		if l.closing && (l.self.role != RoleActive || !l.handoverPossible() || !now.Before(l.closeBy)) {
			l.finish()
			return
		}
		if l.closing && l.closeBy.Before(wake) {
			wake = l.closeBy
		}
		timer.Reset(max(wake.Sub(time.Now()), 0))
	}
}

// handoverPossible: the partner is there and can serve the LAN.
func (l *loop) handoverPossible() bool {
	p := l.peer.view
	return p.present && p.class() == 2
}

// step brings everything up to date at now and returns when it next needs
// to run without new input.
func (l *loop) step(now time.Time) time.Time {
	m := l.m
	sendNow := false
	if !now.Before(l.nextSend) {
		l.checkLink(now)
		sendNow = true
		l.nextSend = l.nextSend.Add(m.cfg.Interval)
		if !l.nextSend.After(now) {
			l.nextSend = now.Add(m.cfg.Interval)
		}
	}
	l.updatePeer(now)
	l.self.drained = l.drained || l.closing
	if st := l.peer.view; st.present && st.term > l.self.term && l.self.role != RoleActive {
		l.self.term = st.term
	}
	a := decide(now, l.self, l.peer.view, l.policy())
	switch a.kind {
	case actClaim:
		l.claim(now, a.reason)
		sendNow = true
	case actRelease:
		l.release(now, a.reason, RoleStandby)
		sendNow = true
	}
	if sendNow {
		l.sendHeartbeats()
	}
	if l.self.role == RoleActive && !now.Before(l.nextLease) {
		l.refreshVIP(now)
	}
	m.publish(l, now)
	l.updateMeta()

	wake := l.nextSend
	for _, t := range []time.Time{a.wake, l.peerDeadline()} {
		if !t.IsZero() && t.Before(wake) {
			wake = t
		}
	}
	if l.self.role == RoleActive && l.nextLease.Before(wake) {
		wake = l.nextLease
	}
	return wake
}

// checkLink follows the carrier of the LAN interface.
func (l *loop) checkLink(now time.Time) {
	up, err := l.m.link.up()
	if err != nil {
		l.log().Warn("pair LAN link state", "interface", l.m.cfg.LANInterface, "err", err)
		return
	}
	if down := !up; down != l.self.lanDown {
		l.self.lanDown = down
		l.log().Warn("pair LAN link", "interface", l.m.cfg.LANInterface, "up", up)
	}
	eligible := !l.self.lanDown && !l.drained && !l.closing
	switch {
	case !eligible:
		l.self.eligibleSince = time.Time{}
	case l.self.eligibleSince.IsZero():
		l.self.eligibleSince = now
	}
}

// receive checks one authentic heartbeat against the replay state of its
// channel and applies it.
func (l *loop) receive(r received) {
	m := l.m
	ctr := &m.ctr.ch[r.ch]
	hb := r.hb
	p := &l.peer
	reject := func(why string) {
		if ctr.rejected.Add(1)%100 == 1 {
			l.log().Warn("pair heartbeat rejected", "channel", r.ch, "from", r.from, "name", hb.Name, "why", why)
		}
	}
	wantSrc := m.cfg.PartnerLANAddr
	if r.ch == ChannelWAN {
		wantSrc = m.cfg.PartnerWANAddr.Addr()
	}
	l.updatePeer(r.at)
	switch {
	case hb.Name == m.cfg.Name:
		reject("carries this member's own name")
		return
	case hb.Channel != r.ch:
		reject("sent on the other channel")
		return
	case r.from.Addr().Unmap() != wantSrc:
		reject("unexpected source address")
		return
	case p.alive && hb.Name != p.view.name:
		reject("a third member")
		return
	}
	silent := r.at.Sub(p.last[r.ch]) >= m.cfg.DeadAfter
	switch {
	case hb.Boot == p.chBoot[r.ch] && hb.Seq <= p.chSeq[r.ch]:
		reject("replayed or reordered")
		return
	case hb.Boot < p.chBoot[r.ch] && !silent:
		reject("an earlier incarnation")
		return
	}
	ctr.recv.Add(1)
	p.chBoot[r.ch], p.chSeq[r.ch], p.last[r.ch] = hb.Boot, hb.Seq, r.at
	// The content of the newest round wins; an older boot's only when the
	// boot it would replace has been silent for DeadAfter (a restart with
	// the clock set back).
	newer := hb.Boot > p.boot || (hb.Boot == p.boot && hb.Seq > p.seq) || r.at.Sub(p.bootAt) >= m.cfg.DeadAfter
	if hb.Boot == p.boot {
		p.bootAt = r.at
	}
	if !newer {
		return // the other channel brought this round (or a newer one) already
	}
	if p.view.name != hb.Name || p.boot != hb.Boot {
		l.log().Info("pair partner heard", "name", hb.Name, "channel", r.ch, "role", hb.Role, "priority", hb.Priority,
			"term", hb.Term)
	}
	p.boot, p.seq, p.bootAt = hb.Boot, hb.Seq, r.at
	v := &p.view
	v.name, v.prio, v.drained, v.lanDown = hb.Name, int(hb.Priority), hb.Drained, hb.LANDown
	v.role, v.term, v.reason = hb.Role, hb.Term, hb.Reason
	v.stopped = hb.Role == RoleStopped
}

// updatePeer recomputes the partner's liveness at now.
func (l *loop) updatePeer(now time.Time) {
	p := &l.peer
	deadline := p.lastSeen().Add(l.m.cfg.DeadAfter)
	alive := !p.lastSeen().IsZero() && now.Before(deadline)
	switch {
	case alive:
		p.grace = time.Time{}
	case p.alive && p.grace.IsZero() && now.Sub(deadline) > l.m.cfg.Interval:
		// The silence is noticed more than an interval late: this member
		// was not running (the machine or the process stalled), and the
		// partner's heartbeats may be waiting in the socket buffers. The
		// readers get one interval to deliver them before the partner is
		// dead.
		p.grace = now.Add(l.m.cfg.Interval)
		l.log().Warn("pair: the loop ran late; waiting for queued heartbeats", "late", now.Sub(deadline).Round(time.Millisecond))
	}
	if !p.grace.IsZero() && now.Before(p.grace) {
		alive = true
	}
	if alive && !p.alive {
		p.view.contactSince = now
		p.view.heard = true
	}
	if !alive && p.alive {
		l.log().Warn("pair partner silent", "name", p.view.name, "for", now.Sub(p.lastSeen()).Round(time.Millisecond))
	}
	p.alive = alive
	p.view.present = alive && !p.view.stopped
	if p.member && !alive && p.view.heard && now.Sub(l.warned) > 10*time.Second && now.Sub(p.lastSeen()) > time.Second {
		l.warned = now
		l.log().Warn("pair: memberlist sees the partner but no heartbeat arrives; check Key, ports and addresses")
	}
}

func (p *peer) lastSeen() time.Time {
	if p.last[ChannelWAN].After(p.last[ChannelLAN]) {
		return p.last[ChannelWAN]
	}
	return p.last[ChannelLAN]
}

// peerDeadline is when the partner turns silent if nothing arrives.
func (l *loop) peerDeadline() time.Time {
	if !l.peer.alive {
		return time.Time{}
	}
	if d := l.peer.lastSeen().Add(l.m.cfg.DeadAfter); d.After(l.peer.grace) {
		return d
	}
	return l.peer.grace
}

func (l *loop) claim(now time.Time, reason Reason) {
	m := l.m
	from := ""
	if l.peer.view.role == RoleActive {
		from = l.peer.view.name
	}
	term := max(l.self.term, l.peer.view.term) + 1
	l.self.role, l.self.term, l.reason, l.since = RoleActive, term, reason, now
	l.refreshVIP(now)
	l.startGARP()
	l.record(now, from, m.cfg.Name, reason)
	l.log().Info("pair active", "reason", reason, "term", term, "from", from)
}

// release gives the role up (to the partner, if it holds it).
func (l *loop) release(now time.Time, reason Reason, role Role) {
	m := l.m
	to := ""
	if l.peer.view.present && l.peer.view.role == RoleActive {
		to = l.peer.view.name
	}
	l.stopGARP()
	if err := m.link.delVIP(); err != nil {
		m.ctr.vipErr.Add(1)
		l.log().Error("pair: removing the VIP", "vip", m.cfg.VIP, "err", err)
	}
	l.self.role, l.reason, l.since = role, reason, now
	l.record(now, m.cfg.Name, to, reason)
	l.log().Info("pair "+role.String(), "reason", reason, "term", l.self.term, "to", to)
}

func (l *loop) record(now time.Time, from, to string, reason Reason) {
	l.last = &Failover{At: now, From: from, To: to, Reason: reason}
	l.m.ctr.failovers[reason].Add(1)
}

func (l *loop) refreshVIP(now time.Time) {
	m := l.m
	l.nextLease = now.Add(m.vipLease / 4)
	if err := m.link.addVIP(m.vipLease); err != nil {
		m.ctr.vipErr.Add(1)
		l.nextLease = now.Add(m.cfg.Interval)
		l.log().Error("pair: adding the VIP", "vip", m.cfg.VIP, "interface", m.cfg.LANInterface, "err", err)
	}
}

// startGARP announces the VIP on the schedule, from its own goroutine.
func (l *loop) startGARP() {
	l.stopGARP()
	stop, done := make(chan struct{}), make(chan struct{})
	l.garpStop, l.garpDone = stop, done
	m := l.m
	go func() {
		defer close(done)
		start := time.Now()
		for _, at := range garpSchedule {
			select {
			case <-stop:
				return
			case <-time.After(time.Until(start.Add(at))):
			}
			if err := m.link.garp(); err != nil {
				l.log().Warn("pair gratuitous ARP", "interface", m.cfg.LANInterface, "err", err)
				continue
			}
			m.ctr.garp.Add(1)
		}
	}()
}

func (l *loop) stopGARP() {
	if l.garpStop != nil {
		close(l.garpStop)
		<-l.garpDone
		l.garpStop, l.garpDone = nil, nil
	}
}

func (l *loop) heartbeat() heartbeat {
	return heartbeat{Role: l.self.role, Drained: l.self.drained, LANDown: l.self.lanDown, Reason: l.reason,
		Priority: uint16(l.self.prio), Term: l.self.term, Boot: l.m.boot, Seq: l.seq, Name: l.m.cfg.Name}
}

func (l *loop) sendHeartbeats() {
	l.seq++
	hb := l.heartbeat()
	l.buf = l.m.send(ChannelLAN, &hb, l.buf)
	l.buf = l.m.send(ChannelWAN, &hb, l.buf)
}

// finish ends the member: VIP off, "stopped" announced, everything closed.
func (l *loop) finish() {
	m := l.m
	now := time.Now()
	if l.self.role == RoleActive {
		l.release(now, ReasonStop, RoleStopped)
	} else {
		l.stopGARP()
		l.self.role, l.since = RoleStopped, now
	}
	// Twice, 10 ms apart: a lost datagram would cost the partner DeadAfter.
	for i := range 2 {
		if i > 0 {
			time.Sleep(10 * time.Millisecond)
		}
		l.sendHeartbeats()
	}
	m.publish(l, now)
	var errs []error
	if m.ml != nil {
		if err := m.ml.Leave(100 * time.Millisecond); err != nil {
			l.log().Debug("pair memberlist leave", "err", err)
		}
		errs = append(errs, m.ml.Shutdown())
	}
	m.closeSockets()
	close(m.quit) // the readers, joinLoop, metaLoop and callers of do return
	m.bg.Wait()
	errs = append(errs, m.link.delVIP(), m.link.close())
	m.notify.close()
	m.closeErr = errors.Join(errs...)
	l.log().Info("pair member stopped")
	close(m.done)
}

// snapshot is the State the loop's view gives at now.
func (l *loop) snapshot(now time.Time) State {
	p := &l.peer
	s := State{Name: l.m.cfg.Name, Role: l.self.role, Since: l.since, Term: l.self.term, Priority: l.self.prio,
		Drained: l.drained, LANDown: l.self.lanDown}
	if l.self.role == RoleActive {
		s.Active = l.m.cfg.Name
	} else if p.view.present && p.view.role == RoleActive {
		s.Active = p.view.name
	}
	dead := l.m.cfg.DeadAfter
	s.Partner = PartnerState{Name: p.view.name, Alive: p.alive,
		LAN:  !p.last[ChannelLAN].IsZero() && now.Sub(p.last[ChannelLAN]) < dead,
		WAN:  !p.last[ChannelWAN].IsZero() && now.Sub(p.last[ChannelWAN]) < dead,
		Role: p.view.role, Term: p.view.term, Priority: p.view.prio, Drained: p.view.drained,
		LANDown: p.view.lanDown, LastSeen: p.lastSeen(), Member: p.member}
	if l.last != nil {
		f := *l.last
		s.LastFailover = &f
	}
	return s
}
