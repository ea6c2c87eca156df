package state

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/causeway-net/causeway/controller/netmap"
	"github.com/causeway-net/causeway/controller/store"
)

// A pair is the two live appliances of one site. Each member reports its
// own view (POST /api/v1/pair/report: role, term, since, whether the
// partner is alive, its last failover); the controller keeps the latest
// report per member and derives the site's pair status from them: the
// active member is the one that reports active with the highest term, a
// fresh report (PairReportFresh) beating a stale one whatever its term, so
// that a member which died as active cannot hold the role by its last
// word. A change of the active member (or of its term) is a change like
// any other: it recompiles the netmaps of the tenant, whose peer entries
// of the two members say which one is active.

// Pair limits.
const (
	// MaxPairMembers is how many live appliances a site may have.
	MaxPairMembers = 2
	// PairReportFresh is how long a report counts as fresh.
	PairReportFresh = 90 * time.Second
	// FailoverRetention is how long failovers are kept.
	FailoverRetention = 30 * 24 * time.Hour
	// RecentFailovers is how many failovers the pair status lists.
	RecentFailovers = 20
	// MaxFailoverReason bounds a failover's reason, in bytes.
	MaxFailoverReason = 200
	// maxTerm keeps terms exact in JSON (2^53 - 1).
	maxTerm = 1<<53 - 1
)

// FailoverReasons are the reason labels failovers are counted under: a
// reason that starts with one of them (followed by the end, a space or a
// colon, as in "partner-down: no heartbeat for 900ms") counts under it,
// any other under "other".
var FailoverReasons = []string{"partner-down", "drain", "preempt", "priority", "manual", "other"}

// failoverLabel is the label a reason counts under.
func failoverLabel(reason string) string {
	head, _, _ := strings.Cut(reason, ":")
	head, _, _ = strings.Cut(head, " ")
	if i := slices.Index(FailoverReasons, head); i >= 0 {
		return FailoverReasons[i]
	}
	return "other"
}

// PairFailoverInput is the last failover a member saw. From and To are
// appliance names as the member knows them (its own and its partner's).
type PairFailoverInput struct {
	At       time.Time
	From, To string
	Reason   string
}

// PairReportInput is one member's view of its pair.
type PairReportInput struct {
	Role         store.PairRole
	Term         int64
	Since        time.Time
	PartnerAlive bool
	// LastFailover is nil when the member saw none.
	LastFailover *PairFailoverInput
}

// PairReportResult is what the controller holds after a report.
type PairReportResult struct {
	// Active is the name of the member the controller holds active, ""
	// if none; Term its term.
	Active string
	Term   int64
}

// ReportPair stores a member's report and derives its site's pair status
// again. A change of the active member records a failover and reaches
// every appliance of the tenant.
func (s *State) ReportPair(ctx context.Context, d *Device, in PairReportInput) (*PairReportResult, error) {
	now := s.now()
	var f fields
	if in.Role != store.PairActive && in.Role != store.PairStandby {
		f.add("role", "want active or standby, got %q", in.Role)
	}
	if in.Term < 0 || in.Term > maxTerm {
		f.add("term", "want 0 to %d, got %d", int64(maxTerm), in.Term)
	}
	if in.Since.IsZero() {
		f.add("since", "required: when the member took its role")
	} else if in.Since.After(now.Add(MaxReportSkew)) {
		f.add("since", "%s is in the future", in.Since.UTC().Format(time.RFC3339))
	}
	if fo := in.LastFailover; fo != nil {
		if fo.At.IsZero() {
			f.add("last_failover.at", "required")
		} else if fo.At.After(now.Add(MaxReportSkew)) {
			f.add("last_failover.at", "%s is in the future", fo.At.UTC().Format(time.RFC3339))
		}
		if fo.To == "" {
			f.add("last_failover.to", "required: the member that became active")
		}
		if len(fo.Reason) > MaxFailoverReason || !utf8.ValidString(fo.Reason) || strings.ContainsFunc(fo.Reason, func(r rune) bool { return r < 0x20 }) {
			f.add("last_failover.reason", "want at most %d bytes of printable UTF-8", MaxFailoverReason)
		}
	}
	if err := f.err(); err != nil {
		return nil, err
	}
	type outcome struct {
		seq      int64
		res      *PairReportResult
		failover string // the label of a failover recorded, "" if none
	}
	out, err := store.Write(ctx, s.store, func(tx *store.Tx) (*outcome, error) {
		self, err := tx.ApplianceByID(ctx, d.TenantID, d.ApplianceID)
		if errors.Is(err, store.ErrNotFound) || (err == nil && self.State == store.ApplianceRevoked) {
			return nil, errorf(CodeUnauthenticated, "appliance %s is not active", d.ApplianceID)
		}
		if err != nil {
			return nil, err
		}
		apps, err := tx.ListAppliances(ctx, d.TenantID)
		if err != nil {
			return nil, err
		}
		// Failovers name the site's appliances: a live one, else the one
		// revoked last (a member that reports the failover away from a
		// partner since revoked). apps is by name and creation.
		live := map[string]*store.Appliance{}
		byName := map[string]*store.Appliance{}
		for _, a := range apps {
			if a.SiteID != self.SiteID {
				continue
			}
			if a.State != store.ApplianceRevoked {
				live[a.ID] = a
			}
			if prev := byName[a.Name]; prev == nil || prev.State == store.ApplianceRevoked {
				byName[a.Name] = a
			}
		}
		r := &store.PairReport{ApplianceID: self.ID, TenantID: d.TenantID, SiteID: self.SiteID, Role: in.Role, Term: in.Term,
			Since: in.Since, PartnerAlive: in.PartnerAlive, ReportedAt: now}
		if fo := in.LastFailover; fo != nil {
			var f fields
			r.LastFailover = store.Failover{At: fo.At, Reason: fo.Reason}
			for _, side := range []struct {
				field, name string
				id          *string
			}{{"last_failover.from", fo.From, &r.LastFailover.From}, {"last_failover.to", fo.To, &r.LastFailover.To}} {
				if side.name == "" {
					continue
				}
				if a := byName[side.name]; a != nil {
					*side.id = a.ID
				} else {
					f.add(side.field, "no appliance %q at this appliance's site", side.name)
				}
			}
			if err := f.err(); err != nil {
				return nil, err
			}
		}
		if err := tx.PutPairReport(ctx, r); err != nil {
			return nil, storeErr(err)
		}
		reports, err := tx.ListPairReports(ctx, d.TenantID, self.SiteID)
		if err != nil {
			return nil, err
		}
		prev, err := tx.PairStatusOf(ctx, d.TenantID, self.SiteID)
		if errors.Is(err, store.ErrNotFound) {
			prev, err = nil, nil
		}
		if err != nil {
			return nil, err
		}
		next, fo := derivePair(prev, live, reports, now)
		o := &outcome{res: &PairReportResult{}}
		if next == nil {
			return o, nil
		}
		if a := live[next.ActiveID]; a != nil {
			o.res.Active, o.res.Term = a.Name, next.Term
		}
		if prev != nil && prev.ActiveID == next.ActiveID && prev.Term == next.Term && prev.Since.Equal(next.Since) &&
			prev.LastFailover == next.LastFailover {
			return o, nil
		}
		next.TenantID, next.SiteID, next.UpdatedAt = d.TenantID, self.SiteID, now
		if err := tx.PutPairStatus(ctx, next); err != nil {
			return nil, storeErr(err)
		}
		if fo != nil {
			added, err := tx.InsertPairFailover(ctx, fo)
			if err != nil {
				return nil, storeErr(err)
			}
			if added {
				o.failover = failoverLabel(fo.Reason)
			}
		}
		if prev == nil || prev.ActiveID != next.ActiveID || prev.Term != next.Term {
			// What peers see changed: the members' peer entries.
			if o.seq, err = s.record(ctx, tx, d.TenantID, "pair.status", self.SiteID); err != nil {
				return nil, err
			}
		}
		return o, nil
	})
	if err != nil {
		return nil, err
	}
	if out.failover != "" {
		s.mu.Lock()
		if s.failovers == nil {
			s.failovers = map[string]uint64{}
		}
		s.failovers[out.failover]++
		s.mu.Unlock()
	}
	if out.seq > 0 {
		s.awaitApplied(ctx, out.seq)
	}
	return out.res, nil
}

// derivePair is the site's pair status given its live members and their
// reports, and the failover to record if the active member changed. It
// returns nil when there is nothing to tell (no member ever reported
// active).
func derivePair(prev *store.PairStatus, live map[string]*store.Appliance, reports []*store.PairReport, now time.Time) (*store.PairStatus, *store.PairFailover) {
	var best *store.PairReport
	fresh := func(r *store.PairReport) bool { return now.Sub(r.ReportedAt) <= PairReportFresh }
	better := func(r, than *store.PairReport) bool {
		if fr, ft := fresh(r), fresh(than); fr != ft {
			return fr
		}
		return cmp.Or(cmp.Compare(r.Term, than.Term), r.Since.Compare(than.Since),
			cmp.Compare(live[than.ApplianceID].Name, live[r.ApplianceID].Name)) > 0
	}
	for _, r := range reports {
		if r.Role != store.PairActive || live[r.ApplianceID] == nil {
			continue
		}
		if best == nil || better(r, best) {
			best = r
		}
	}
	if best == nil {
		if prev == nil || prev.ActiveID == "" || live[prev.ActiveID] != nil {
			return prev, nil
		}
		// The active member is gone (revoked) and nobody took over.
		next := *prev
		next.ActiveID = ""
		return &next, nil
	}
	next := &store.PairStatus{ActiveID: best.ApplianceID, Term: best.Term, Since: best.Since}
	if prev != nil {
		next.LastFailover = prev.LastFailover
	}
	if prev == nil || prev.ActiveID == "" || prev.ActiveID == best.ApplianceID {
		return next, nil
	}
	fo := store.Failover{At: now, From: prev.ActiveID, To: best.ApplianceID,
		Reason: fmt.Sprintf("%s reported active with term %d", live[best.ApplianceID].Name, best.Term)}
	if lf := best.LastFailover; lf.To == best.ApplianceID && !lf.At.IsZero() {
		// The new active member's own account of it.
		fo.At, fo.Reason = lf.At, lf.Reason
	}
	next.LastFailover = fo
	return next, &store.PairFailover{SiteID: best.SiteID, TenantID: best.TenantID, Term: best.Term, Failover: fo}
}

// PairMember is one member of a pair as the API shows it.
type PairMember struct {
	*ApplianceInfo
	// Report is its latest report, nil if it never reported.
	Report *store.PairReport
}

// NamedFailover is a failover with the members' names.
type NamedFailover struct {
	store.PairFailover
	FromName, ToName string
}

// PairView is the pair status of a site.
type PairView struct {
	Site *store.Site
	// Paired reports whether the site has two live appliances.
	Paired  bool
	Members []*PairMember // the site's live appliances, by name
	// Status is what the controller derived, nil before any member
	// reported active.
	Status     *store.PairStatus
	ActiveName string
	// LastFailover is Status.LastFailover with names.
	LastFailover *NamedFailover
	// Failovers are the most recent, newest first.
	Failovers []*NamedFailover
}

// PairStatus returns the pair status of a site.
func (s *State) PairStatus(ctx context.Context, p *Principal, tenantRef, siteRef string) (*PairView, error) {
	type read struct {
		v    *PairView
		apps []*store.Appliance
	}
	r, err := store.Read(ctx, s.store, func(tx *store.Tx) (*read, error) {
		t, err := tenantFor(ctx, tx, p, tenantRef)
		if err != nil {
			return nil, err
		}
		site, err := siteFor(ctx, tx, t.ID, siteRef)
		if err != nil {
			return nil, err
		}
		v := &PairView{Site: site}
		apps, err := tx.ListAppliances(ctx, t.ID)
		if err != nil {
			return nil, err
		}
		reports, err := tx.ListPairReports(ctx, t.ID, site.ID)
		if err != nil {
			return nil, err
		}
		byApp := map[string]*store.PairReport{}
		for _, rep := range reports {
			byApp[rep.ApplianceID] = rep
		}
		for _, a := range apps {
			if a.SiteID == site.ID && a.State != store.ApplianceRevoked {
				v.Members = append(v.Members, &PairMember{ApplianceInfo: &ApplianceInfo{Appliance: a}, Report: byApp[a.ID]})
			}
		}
		v.Paired = len(v.Members) == MaxPairMembers
		if v.Status, err = tx.PairStatusOf(ctx, t.ID, site.ID); errors.Is(err, store.ErrNotFound) {
			v.Status = nil
		} else if err != nil {
			return nil, err
		}
		fs, err := tx.ListPairFailovers(ctx, t.ID, site.ID, RecentFailovers)
		if err != nil {
			return nil, err
		}
		for _, f := range fs {
			v.Failovers = append(v.Failovers, &NamedFailover{PairFailover: *f})
		}
		return &read{v: v, apps: apps}, nil
	})
	if err != nil {
		return nil, err
	}
	v := r.v
	names := make(map[string]string, len(r.apps))
	for _, a := range r.apps {
		names[a.ID] = a.Name
	}
	for _, m := range v.Members {
		m.ApplianceInfo = s.info(m.Appliance)
	}
	for _, f := range v.Failovers {
		f.FromName, f.ToName = names[f.From], names[f.To]
	}
	if st := v.Status; st != nil {
		v.ActiveName = names[st.ActiveID]
		if !st.LastFailover.At.IsZero() {
			v.LastFailover = &NamedFailover{PairFailover: store.PairFailover{SiteID: st.SiteID, TenantID: st.TenantID, Failover: st.LastFailover},
				FromName: names[st.LastFailover.From], ToName: names[st.LastFailover.To]}
		}
	}
	return v, nil
}

// setDrained drains (at non-zero) or undrains an appliance. The drained
// member's own netmap says so; the pair package gives up the active role.
func (s *State) setDrained(ctx context.Context, p *Principal, tenantRef, ref string, drain bool) (*ApplianceInfo, error) {
	var a *store.Appliance
	var tenantID string
	seq, err := store.Write(ctx, s.store, func(tx *store.Tx) (int64, error) {
		t, err := tenantFor(ctx, tx, p, tenantRef)
		if err != nil {
			return 0, err
		}
		tenantID = t.ID
		if a, err = applianceFor(ctx, tx, t.ID, ref); err != nil {
			return 0, err
		}
		if a.State == store.ApplianceRevoked {
			return 0, errorf(CodeConflict, "appliance %q is revoked", a.Name)
		}
		if drain == !a.DrainedAt.IsZero() {
			return 0, nil // already so
		}
		at, kind := s.now(), "appliance.drain"
		if !drain {
			at, kind = time.Time{}, "appliance.undrain"
		}
		if err := tx.SetApplianceDrained(ctx, t.ID, a.ID, at); err != nil {
			return 0, err
		}
		a.DrainedAt = at
		return s.record(ctx, tx, t.ID, kind, a.ID)
	})
	if err != nil {
		return nil, err
	}
	if seq > 0 {
		// The audit trail: who, what, and the request id that the change
		// and the netmaps it produces carry.
		msg := "appliance drained"
		if !drain {
			msg = "appliance undrained"
		}
		s.log.Info(msg, "audit", true, "tenant", tenantID, "appliance", a.ID, "name", a.Name, "site", a.SiteID,
			"token", p.TokenID, "request_id", RequestID(ctx), "change", seq)
		s.awaitApplied(ctx, seq)
	}
	return s.info(a), nil
}

// DrainAppliance asks a pair member to give up the active role and stay
// standby. Draining a drained appliance changes nothing.
func (s *State) DrainAppliance(ctx context.Context, p *Principal, tenantRef, ref string) (*ApplianceInfo, error) {
	return s.setDrained(ctx, p, tenantRef, ref, true)
}

// UndrainAppliance lets a drained pair member take the active role again.
func (s *State) UndrainAppliance(ctx context.Context, p *Principal, tenantRef, ref string) (*ApplianceInfo, error) {
	return s.setDrained(ctx, p, tenantRef, ref, false)
}

// checkPairRoom refuses a new appliance (or a token for one) at a site
// that already has MaxPairMembers live appliances, naming field.
func checkPairRoom(apps []*store.Appliance, site *store.Site, field string) error {
	n := 0
	for _, a := range apps {
		if a.SiteID == site.ID && a.State != store.ApplianceRevoked {
			n++
		}
	}
	if n >= MaxPairMembers {
		return &Error{Code: CodeConflict, Msg: "site full", Fields: []FieldError{{field, fmt.Sprintf(
			"site %q already has %d live appliances, the most a site may have (a pair); revoke one first", site.Name, n)}}}
	}
	return nil
}

// checkPriority validates a pair priority.
func checkPriority(f *fields, p int) {
	if p < 0 || p > netmap.MaxPriority {
		f.add("priority", "want 0 to %d (higher is preferred in the pair), got %d", netmap.MaxPriority, p)
	}
}

// MaintainPairs deletes the failovers older than FailoverRetention.
func (s *State) MaintainPairs(ctx context.Context) error {
	_, err := store.Write(ctx, s.store, func(tx *store.Tx) (int64, error) {
		return tx.PrunePairFailovers(ctx, s.now().Add(-FailoverRetention))
	})
	if err != nil {
		return fmt.Errorf("pruning failovers: %w", err)
	}
	return nil
}

// PairFailoverCounts returns the failovers this replica recorded since it
// started, by label (every one of FailoverReasons present).
func (s *State) PairFailoverCounts() map[string]uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]uint64, len(FailoverReasons))
	for _, r := range FailoverReasons {
		out[r] = s.failovers[r]
	}
	return out
}

// PairMemberCounts counts the live appliances of two-appliance sites by
// role as the controller holds it: "active", "standby", or "unknown" for
// a site without an active member.
func (s *State) PairMemberCounts() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int{"active": 0, "standby": 0, "unknown": 0}
	for _, v := range s.tenants {
		for _, a := range v.apps {
			if v.liveAt[a.SiteID] != MaxPairMembers {
				continue
			}
			switch st := v.pairs[a.SiteID]; {
			case st == nil || v.apps[st.ActiveID] == nil:
				out["unknown"]++
			case st.ActiveID == a.ID:
				out["active"]++
			default:
				out["standby"]++
			}
		}
	}
	return out
}

// peerPairOf is a's pair part as its peers see it, nil if its site is no
// pair.
func (v *tenantView) peerPairOf(a *store.Appliance) *netmap.PeerPair {
	if v.liveAt[a.SiteID] != MaxPairMembers {
		return nil
	}
	pp := &netmap.PeerPair{Priority: a.Priority}
	if st := v.pairs[a.SiteID]; st != nil {
		pp.Active, pp.Term = st.ActiveID == a.ID, uint64(st.Term)
	}
	return pp
}

// ownPairOf is a's own pair part, nil if its site is no pair.
func (v *tenantView) ownPairOf(a *store.Appliance) *netmap.Pair {
	if v.liveAt[a.SiteID] != MaxPairMembers {
		return nil
	}
	return &netmap.Pair{Priority: a.Priority, Drained: !a.DrainedAt.IsZero()}
}
