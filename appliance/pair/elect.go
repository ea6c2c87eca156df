package pair

import "time"

// The election is a pure function of what a member knows: its own state,
// the partner's last heartbeat and the clock. Both members run the same
// rules on views that agree within a heartbeat, and every takeover carries a
// term higher than any either has seen, so the rules converge:
//
//   - Both active (a partition healed, or a claim crossed a release): the
//     higher term keeps the role; equal terms go to the higher priority,
//     then the lower name. This one rule also completes every planned
//     hand-over: the claimer's term is higher, so the old active gives way
//     once it sees the claim (make before break).
//   - An active whose LAN link is down gives the role up first (break
//     before make: it cannot serve the LAN anyway), provided the partner's
//     LAN is up; the partner then claims.
//   - A standby claims from a live active when it is the better class
//     (eligible against drained), or with Preempt when both are eligible,
//     it has the strictly higher priority and it has been eligible and in
//     contact for HoldDown.
//   - With no active, the best member claims: eligible before drained
//     before LAN-down, then priority, then lower name.
//   - A standby whose partner is gone claims, at once if it had heard the
//     partner before, after DeadAfter of silence if it just started.

// candidate is what the election knows of either member.
type candidate struct {
	name    string
	prio    int
	drained bool
	lanDown bool
	role    Role
	term    uint64
}

// selfView is this member's side of the election.
type selfView struct {
	candidate
	started       time.Time
	eligibleSince time.Time // since when neither drained nor LAN-down
}

// peerView is the partner as its heartbeats describe it.
type peerView struct {
	candidate
	present      bool      // alive, and not announcing Stopped
	heard        bool      // some heartbeat arrived since this member started
	stopped      bool      // its last heartbeat announced Stopped
	reason       Reason    // of its last role change
	contactSince time.Time // start of the current period of contact
}

type policy struct {
	preempt     bool
	holdDown    time.Duration
	startupWait time.Duration
}

type actionKind uint8

const (
	actNone actionKind = iota
	actClaim
	actRelease
)

type action struct {
	kind   actionKind
	reason Reason
	// wake, if not zero, is when the decision may change without any new
	// input (the end of a startup wait or a hold-down).
	wake time.Time
}

// class ranks how well a member can serve: 2 eligible, 1 drained with its
// LAN up, 0 LAN down.
func (c *candidate) class() int {
	switch {
	case c.lanDown:
		return 0
	case c.drained:
		return 1
	}
	return 2
}

// prefer reports whether (prioA, nameA) beats (prioB, nameB).
func prefer(prioA int, nameA string, prioB int, nameB string) bool {
	if prioA != prioB {
		return prioA > prioB
	}
	return nameA < nameB
}

// peerWinsSplit reports whether the partner keeps the role when both are
// active.
func peerWinsSplit(s selfView, p peerView) bool {
	if p.term != s.term {
		return p.term > s.term
	}
	return prefer(p.prio, p.name, s.prio, s.name)
}

func decide(now time.Time, s selfView, p peerView, pol policy) action {
	sc := s.class()
	if s.role == RoleActive {
		if !p.present {
			return action{}
		}
		if p.role == RoleActive && peerWinsSplit(s, p) {
			return action{kind: actRelease, reason: yieldReason(p.reason)}
		}
		if p.role != RoleActive && sc == 0 && p.class() > 0 {
			return action{kind: actRelease, reason: ReasonLANDown}
		}
		return action{}
	}
	if s.role != RoleStandby {
		return action{}
	}
	if !p.present {
		switch {
		case p.stopped:
			return action{kind: actClaim, reason: ReasonPartnerLeft}
		case p.heard:
			return action{kind: actClaim, reason: ReasonPartnerDead}
		}
		if end := s.started.Add(pol.startupWait); now.Before(end) {
			return action{wake: end}
		}
		return action{kind: actClaim, reason: ReasonStartup}
	}
	pc := p.class()
	if p.role == RoleActive {
		switch {
		case pc == 0:
			// It gives the role up itself once it sees us; claiming now
			// would put the VIP on two links.
			return action{}
		case sc > pc:
			return action{kind: actClaim, reason: ReasonPartnerDrained}
		case pol.preempt && sc == 2 && pc == 2 && s.prio > p.prio:
			since := s.eligibleSince
			if p.contactSince.After(since) {
				since = p.contactSince
			}
			if end := since.Add(pol.holdDown); now.Before(end) {
				return action{wake: end}
			}
			return action{kind: actClaim, reason: ReasonPreempt}
		}
		return action{}
	}
	// Nobody holds the role: the best member takes it.
	if sc < pc || (sc == pc && !prefer(s.prio, s.name, p.prio, p.name)) {
		return action{}
	}
	switch p.reason {
	case ReasonLANDown:
		return action{kind: actClaim, reason: ReasonPartnerLANDown}
	case ReasonDrain:
		return action{kind: actClaim, reason: ReasonPartnerDrained}
	}
	return action{kind: actClaim, reason: ReasonStartup}
}

// yieldReason is why an active gives way to a partner that claimed for
// claim.
func yieldReason(claim Reason) Reason {
	switch claim {
	case ReasonPartnerDrained:
		return ReasonDrain
	case ReasonPreempt:
		return ReasonPreempt
	case ReasonPartnerLANDown:
		return ReasonLANDown
	}
	// It claimed because it thought this member dead or absent: the two
	// were split.
	return ReasonSplit
}
