package pair

import (
	"math/rand/v2"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

var testPolicy = policy{preempt: true, holdDown: time.Second, startupWait: 250 * time.Millisecond}

func standby(name string, prio int) selfView {
	return selfView{candidate: candidate{name: name, prio: prio, role: RoleStandby}, started: t0, eligibleSince: t0}
}

func live(name string, prio int, role Role, term uint64) peerView {
	return peerView{candidate: candidate{name: name, prio: prio, role: role, term: term}, present: true, heard: true,
		contactSince: t0}
}

func TestDecide(t *testing.T) {
	later := t0.Add(5 * time.Second)
	active := func(s selfView, term uint64) selfView { s.role, s.term = RoleActive, term; return s }
	cases := []struct {
		name   string
		now    time.Time
		self   selfView
		peer   peerView
		pol    policy
		kind   actionKind
		reason Reason
		wake   time.Time
	}{
		{name: "startup: alone, still listening", now: t0.Add(100 * time.Millisecond), self: standby("a", 1),
			kind: actNone, wake: t0.Add(250 * time.Millisecond)},
		{name: "startup: alone after the wait", now: t0.Add(250 * time.Millisecond), self: standby("a", 1),
			kind: actClaim, reason: ReasonStartup},
		{name: "startup: both standby, higher priority claims", now: t0, self: standby("b", 2),
			peer: live("a", 1, RoleStandby, 0), kind: actClaim, reason: ReasonStartup},
		{name: "startup: both standby, lower priority waits", now: t0, self: standby("a", 1),
			peer: live("b", 2, RoleStandby, 0), kind: actNone},
		{name: "startup: equal priority, lower name claims", now: t0, self: standby("a", 5),
			peer: live("b", 5, RoleStandby, 0), kind: actClaim, reason: ReasonStartup},
		{name: "startup: equal priority, higher name waits", now: t0, self: standby("b", 5),
			peer: live("a", 5, RoleStandby, 0), kind: actNone},
		{name: "startup: drained loses to lower priority", now: t0,
			self: func() selfView { s := standby("a", 9); s.drained = true; return s }(),
			peer: live("b", 1, RoleStandby, 0), kind: actNone},
		{name: "both drained: higher priority still serves", now: t0,
			self: func() selfView { s := standby("a", 9); s.drained = true; return s }(),
			peer: func() peerView { p := live("b", 1, RoleStandby, 0); p.drained = true; return p }(),
			kind: actClaim, reason: ReasonStartup},
		{name: "partner dead", now: later, self: standby("b", 1),
			peer: peerView{candidate: candidate{name: "a", role: RoleActive, term: 3}, heard: true}, kind: actClaim, reason: ReasonPartnerDead},
		{name: "partner dead while drained: still the only one", now: later,
			self: func() selfView { s := standby("b", 1); s.drained = true; return s }(),
			peer: peerView{candidate: candidate{name: "a", role: RoleActive}, heard: true}, kind: actClaim, reason: ReasonPartnerDead},
		{name: "partner stopped", now: t0, self: standby("b", 1),
			peer: peerView{candidate: candidate{name: "a", role: RoleStopped}, heard: true, stopped: true}, kind: actClaim, reason: ReasonPartnerLeft},
		{name: "active partner drained", now: t0, self: standby("b", 1),
			peer: func() peerView { p := live("a", 9, RoleActive, 4); p.drained = true; return p }(),
			kind: actClaim, reason: ReasonPartnerDrained},
		{name: "both drained: keep the current active", now: t0,
			self: func() selfView { s := standby("b", 1); s.drained = true; return s }(),
			peer: func() peerView { p := live("a", 9, RoleActive, 4); p.drained = true; return p }(), kind: actNone},
		{name: "active partner LAN down: wait for its release", now: t0, self: standby("b", 1),
			peer: func() peerView { p := live("a", 9, RoleActive, 4); p.lanDown = true; return p }(), kind: actNone},
		{name: "partner released for LAN down", now: t0, self: standby("b", 1),
			peer: func() peerView {
				p := live("a", 9, RoleStandby, 4)
				p.lanDown, p.reason = true, ReasonLANDown
				return p
			}(), kind: actClaim, reason: ReasonPartnerLANDown},
		{name: "preempt: within hold-down", now: t0.Add(500 * time.Millisecond), self: standby("a", 9),
			peer: live("b", 1, RoleActive, 4), pol: testPolicy, kind: actNone, wake: t0.Add(time.Second)},
		{name: "preempt: after hold-down", now: t0.Add(time.Second), self: standby("a", 9),
			peer: live("b", 1, RoleActive, 4), pol: testPolicy, kind: actClaim, reason: ReasonPreempt},
		{name: "preempt: hold-down counts from contact", now: t0.Add(time.Second), self: standby("a", 9),
			peer: func() peerView {
				p := live("b", 1, RoleActive, 4)
				p.contactSince = t0.Add(800 * time.Millisecond)
				return p
			}(),
			pol: testPolicy, kind: actNone, wake: t0.Add(1800 * time.Millisecond)},
		{name: "preempt: equal priority never preempts", now: later, self: standby("a", 5),
			peer: live("b", 5, RoleActive, 4), pol: testPolicy, kind: actNone},
		{name: "no preempt: higher priority stays standby", now: later, self: standby("a", 9),
			peer: live("b", 1, RoleActive, 4), kind: actNone},
		{name: "preempt: drained does not", now: later,
			self: func() selfView { s := standby("a", 9); s.drained = true; return s }(),
			peer: live("b", 1, RoleActive, 4), pol: testPolicy, kind: actNone},
		{name: "split: higher term keeps it", now: t0, self: active(standby("a", 9), 5),
			peer: live("b", 1, RoleActive, 6), kind: actRelease, reason: ReasonSplit},
		{name: "split: lower term partner yields", now: t0, self: active(standby("b", 1), 6),
			peer: live("a", 9, RoleActive, 5), kind: actNone},
		{name: "split: equal terms, priority", now: t0, self: active(standby("b", 1), 6),
			peer: live("a", 9, RoleActive, 6), kind: actRelease, reason: ReasonSplit},
		{name: "drained active yields to the claim", now: t0,
			self: func() selfView { s := active(standby("a", 9), 5); s.drained = true; return s }(),
			peer: func() peerView { p := live("b", 1, RoleActive, 6); p.reason = ReasonPartnerDrained; return p }(),
			kind: actRelease, reason: ReasonDrain},
		{name: "drained active waits for the claim", now: t0,
			self: func() selfView { s := active(standby("a", 9), 5); s.drained = true; return s }(),
			peer: live("b", 1, RoleStandby, 5), kind: actNone},
		{name: "preempted active yields", now: t0, self: active(standby("b", 1), 5),
			peer: func() peerView { p := live("a", 9, RoleActive, 6); p.reason = ReasonPreempt; return p }(),
			kind: actRelease, reason: ReasonPreempt},
		{name: "active with LAN down releases first", now: t0,
			self: func() selfView { s := active(standby("a", 9), 5); s.lanDown = true; return s }(),
			peer: live("b", 1, RoleStandby, 5), kind: actRelease, reason: ReasonLANDown},
		{name: "active with LAN down keeps it when the partner's is down too", now: t0,
			self: func() selfView { s := active(standby("a", 9), 5); s.lanDown = true; return s }(),
			peer: func() peerView { p := live("b", 1, RoleStandby, 5); p.lanDown = true; return p }(), kind: actNone},
		{name: "active with LAN down and no partner keeps it", now: t0,
			self: func() selfView { s := active(standby("a", 9), 5); s.lanDown = true; return s }(), kind: actNone},
	}
	for _, c := range cases {
		pol := c.pol
		pol.startupWait = 250 * time.Millisecond
		a := decide(c.now, c.self, c.peer, pol)
		if a.kind != c.kind || a.reason != c.reason || !a.wake.Equal(c.wake) {
			t.Errorf("%s: got %+v, want kind %d reason %v wake %v", c.name, a, c.kind, c.reason, c.wake)
		}
	}
}

// simMember is one member in the election simulation.
type simMember struct {
	candidate
	reason Reason
}

func (s *simMember) self() selfView {
	return selfView{candidate: s.candidate, started: t0, eligibleSince: t0}
}

func (s *simMember) peer() peerView {
	return peerView{candidate: s.candidate, present: true, heard: true, reason: s.reason, contactSince: t0}
}

// TestElectionConverges runs both members' rules against each other's
// state through random drains, LAN faults and priority changes, with the
// members evaluating in random order, and checks that: they settle on
// exactly one active, the one the policy prefers; a term only grows; a
// planned hand-over (drain, preempt) releases only while the partner
// already holds the role; and an active whose LAN went down releases
// before the partner claims.
func TestElectionConverges(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, preempt := range []bool{false, true} {
		pol := policy{preempt: preempt, holdDown: time.Second, startupWait: 250 * time.Millisecond}
		ms := [2]*simMember{{candidate: candidate{name: "a", prio: 200, role: RoleStandby}},
			{candidate: candidate{name: "b", prio: 100, role: RoleStandby}}}
		now := t0.Add(time.Hour)
		for round := range 2000 {
			switch op := rng.IntN(4); op {
			case 0:
				m := ms[rng.IntN(2)]
				m.drained = !m.drained
			case 1:
				m := ms[rng.IntN(2)]
				m.lanDown = rng.IntN(3) == 0
			case 2:
				ms[rng.IntN(2)].prio = 100 + 100*rng.IntN(3)
			}
			settled := false
			for step := 0; step < 20 && !settled; step++ {
				settled = true
				for _, i := range rng.Perm(2) {
					me, other := ms[i], ms[1-i]
					if me.role != RoleActive && other.term > me.term {
						me.term = other.term
					}
					a := decide(now, me.self(), other.peer(), pol)
					switch a.kind {
					case actClaim:
						if other.role == RoleActive && other.lanDown {
							t.Fatalf("round %d: %s claimed while %s still holds the VIP with its LAN down", round, me.name, other.name)
						}
						me.role, me.term, me.reason = RoleActive, max(me.term, other.term)+1, a.reason
						settled = false
					case actRelease:
						if (a.reason == ReasonDrain || a.reason == ReasonPreempt) && other.role != RoleActive {
							t.Fatalf("round %d: %s released for %v with no other holder", round, me.name, a.reason)
						}
						me.role, me.reason = RoleStandby, a.reason
						settled = false
					}
				}
			}
			if !settled {
				t.Fatalf("round %d: no fixed point: %+v %+v", round, *ms[0], *ms[1])
			}
			n := 0
			var act, other *simMember
			for i, m := range ms {
				if m.role == RoleActive {
					n++
					act, other = m, ms[1-i]
				}
			}
			if n != 1 {
				t.Fatalf("round %d (preempt %v): %d actives: %+v %+v", round, preempt, n, *ms[0], *ms[1])
			}
			ac, oc := act.class(), other.class()
			if ac < oc {
				t.Fatalf("round %d: active %+v is worse than %+v", round, *act, *other)
			}
			if preempt && ac == 2 && oc == 2 && other.prio > act.prio {
				t.Fatalf("round %d: with preempt, %+v should hold the role, not %+v", round, *other, *act)
			}
		}
	}
}
