package state

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"
	"unicode"

	"github.com/google/uuid"

	"github.com/causeway-net/causeway/controller/store"
)

// Usage metering limits and defaults.
const (
	// MaxUsageRecords bounds the records of one usage report.
	MaxUsageRecords = 500
	// MaxUsageCounts bounds the counts of one record.
	MaxUsageCounts = 1024
	// DefaultUsageDedupRetention is how long the (appliance, seq) pairs of
	// counted records are kept. Records that started longer ago than that
	// are acknowledged but no longer counted: their dedup rows may be gone.
	DefaultUsageDedupRetention = 7 * 24 * time.Hour
	// MaxUsageRows bounds the rows of one usage query.
	MaxUsageRows = 50000
	// MaxBillingCustomer bounds a billing customer id, in bytes.
	MaxBillingCustomer = 256
)

// UsageCount is what one meter counted in one direction during a record:
// inner IP bytes and packets.
type UsageCount struct {
	Meter     string // store.MeterOverlay or store.MeterGateway
	PeerSite  string // the peer site's id, overlay only
	Direction string // store.DirectionTx or store.DirectionRx
	Bytes     int64
	Packets   int64
}

// UsageRecord is one interval of an appliance's counters: at most an hour
// within one UTC hour. Seq is the appliance's own, strictly increasing.
type UsageRecord struct {
	Seq        int64
	Start, End time.Time
	Usage      []UsageCount
}

// MeterKey names a meter and direction in Options.ExportMeters:
// "overlay.tx".
func MeterKey(meter, direction string) string { return meter + "." + direction }

// usageEventNamespace is the UUID namespace of usage event ids:
// UUIDv5(URL namespace, "https://causeway.dev/ns/metering/usage").
var usageEventNamespace = uuid.NewSHA1(uuid.NameSpaceURL, []byte("https://causeway.dev/ns/metering/usage"))

// UsageEventID is the id of the event that carries an outbox entry:
// UUIDv5(usageEventNamespace, "<appliance id>/<first seq>/<meter>/<direction>").
// A record counts exactly once and lies in one hour, so it belongs to
// exactly one entry per meter and direction, and the lowest sequence
// number of an entry's records names it: the id is the same for every
// attempt, on every replica, after any restart, and no two entries share
// it.
func UsageEventID(applianceID string, firstSeq int64, meter, direction string) string {
	return uuid.NewSHA1(usageEventNamespace, fmt.Appendf(nil, "%s/%d/%s/%s", applianceID, firstSeq, meter, direction)).String()
}

// IdentifyDevice finds the appliance holding a device credential, revoked
// or not, for the usage report: a revoked appliance hears that its usage
// is refused (CodeForbidden) rather than that its credential is unknown.
func (s *State) IdentifyDevice(ctx context.Context, credential string) (*Device, error) {
	hash := hashSecret(credential)
	s.mu.Lock()
	ref, ok := s.devices[hash]
	s.mu.Unlock()
	if ok {
		return &Device{TenantID: ref.tenantID, ApplianceID: ref.applianceID}, nil
	}
	a, err := store.Read(ctx, s.store, func(tx *store.Tx) (*store.Appliance, error) { return tx.ApplianceByCredential(ctx, hash) })
	if errors.Is(err, store.ErrNotFound) {
		return nil, errorf(CodeUnauthenticated, "unknown device credential")
	}
	if err != nil {
		return nil, err
	}
	return &Device{TenantID: a.TenantID, ApplianceID: a.ID}, nil
}

type ledgerKey struct {
	peer, meter, direction string
	hour                   int64
}

type entryKey struct {
	meter, direction string
	hour             int64
}

// ReportUsage counts an appliance's usage records exactly once: in one
// transaction, each record's (appliance, seq) is recorded, and only the
// records not recorded before add to the ledger and, for the exported
// meters (Options.ExportMeters), to the export outbox. It returns every
// seq now stored, those counted before included, so that the appliance
// may delete them. Records that started longer ago than the dedup
// retention are acknowledged without being counted (they may have been
// counted, and their dedup rows pruned). The API checks the records'
// shape; a revoked appliance's records are refused (CodeForbidden).
func (s *State) ReportUsage(ctx context.Context, d *Device, recs []UsageRecord) ([]int64, error) {
	if len(recs) > MaxUsageRecords {
		return nil, &Error{Code: CodeInvalid, Msg: "invalid input", Fields: []FieldError{{"records", fmt.Sprintf("at most %d records per report, got %d", MaxUsageRecords, len(recs))}}}
	}
	now := s.now()
	cutoff := now.Add(-s.opts.UsageDedupRetention)
	order := slices.Clone(recs)
	slices.SortFunc(order, func(a, b UsageRecord) int { return cmp.Compare(a.Seq, b.Seq) })
	type result struct {
		counted, old int
	}
	res, err := store.WriteUsage(ctx, s.store, func(tx *store.Tx) (result, error) {
		var res result
		a, err := tx.ApplianceByID(ctx, d.TenantID, d.ApplianceID)
		if errors.Is(err, store.ErrNotFound) {
			return res, notFound("appliance", d.ApplianceID)
		}
		if err != nil {
			return res, err
		}
		if a.State == store.ApplianceRevoked {
			return res, errorf(CodeForbidden, "appliance %s was revoked at %s: its usage is refused", a.ID, a.RevokedAt.Format(time.RFC3339))
		}
		ledger := map[ledgerKey]*store.UsageRow{}
		entries := map[entryKey]*store.OutboxEntry{}
		lastSeq := map[entryKey]int64{} // the newest record counted in each entry
		for _, r := range order {
			if r.Start.Before(cutoff) {
				res.old++
				continue
			}
			fresh, err := tx.MarkUsageSeen(ctx, a.ID, r.Seq, r.Start, now)
			if err != nil {
				return res, err
			}
			if !fresh {
				continue
			}
			res.counted++
			hour := r.Start.Truncate(store.UsageHour)
			for _, u := range r.Usage {
				lk := ledgerKey{u.PeerSite, u.Meter, u.Direction, hour.UnixMilli()}
				row := ledger[lk]
				if row == nil {
					row = &store.UsageRow{TenantID: a.TenantID, SiteID: a.SiteID, PeerSiteID: u.PeerSite, Meter: u.Meter, Direction: u.Direction, Start: hour}
					ledger[lk] = row
				}
				row.Bytes += u.Bytes
				row.Packets += u.Packets
				name := s.opts.ExportMeters[MeterKey(u.Meter, u.Direction)]
				if name == "" || (u.Bytes == 0 && u.Packets == 0) {
					continue
				}
				ek := entryKey{u.Meter, u.Direction, hour.UnixMilli()}
				e := entries[ek]
				if e == nil {
					e = &store.OutboxEntry{TenantID: a.TenantID, SiteID: a.SiteID, ApplianceID: a.ID, FirstSeq: r.Seq,
						Meter: u.Meter, Direction: u.Direction, MeterName: name, Hour: hour, Start: r.Start, End: r.End, CreatedAt: now}
					entries[ek] = e
				}
				if e.Records == 0 || lastSeq[ek] != r.Seq {
					e.Records++
					lastSeq[ek] = r.Seq
				}
				e.Bytes += u.Bytes
				e.Packets += u.Packets
				e.Start, e.End = minTime(e.Start, r.Start), maxTime(e.End, r.End)
			}
		}
		rows := slices.Collect(maps.Values(ledger))
		store.SortUsageRows(rows)
		if err := tx.AddUsage(ctx, rows, now); err != nil {
			return res, err
		}
		out := slices.Collect(maps.Values(entries))
		for _, e := range out {
			e.EventID = UsageEventID(e.ApplianceID, e.FirstSeq, e.Meter, e.Direction)
		}
		slices.SortFunc(out, func(a, b *store.OutboxEntry) int { return cmp.Compare(a.EventID, b.EventID) })
		return res, tx.InsertOutbox(ctx, out)
	})
	if err != nil {
		return nil, storeErr(err)
	}
	if res.old > 0 {
		s.log.Warn("usage records older than the dedup retention acknowledged without counting them",
			"appliance", d.ApplianceID, "records", res.old, "retention", s.opts.UsageDedupRetention)
	}
	acked := make([]int64, len(recs))
	for i, r := range recs {
		acked[i] = r.Seq
	}
	return acked, nil
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// PruneUsage deletes the dedup rows of records that started longer ago
// than the dedup retention.
func (s *State) PruneUsage(ctx context.Context) error {
	_, err := store.WriteUsage(ctx, s.store, func(tx *store.Tx) (int64, error) {
		return tx.PruneUsageSeen(ctx, s.now().Add(-s.opts.UsageDedupRetention))
	})
	return err
}

// RunUsageMaintenance calls PruneUsage every interval (10 minutes if 0)
// until ctx ends.
func (s *State) RunUsageMaintenance(ctx context.Context, interval time.Duration) {
	s.runEvery(ctx, cmp.Or(interval, 10*time.Minute), "usage dedup pruning", s.PruneUsage)
}

// UsageQuery asks for ledger rows. Tenant "" means the caller's tenant
// for a tenant admin and every tenant for an operator; Site needs a
// tenant. Rows of the hours in [From, To) are summed per By (an hour or
// a day, UTC).
type UsageQuery struct {
	Tenant, Site string
	From, To     time.Time
	By           time.Duration
}

// UsageLine is one ledger row with the names of its tenant and sites
// ("" for a site that no longer exists).
type UsageLine struct {
	*store.UsageRow
	TenantName, SiteName, PeerSiteName string
}

// UsageReport answers a UsageQuery.
type UsageReport struct {
	From, To time.Time
	By       time.Duration
	Lines    []UsageLine
}

// Usage reads the ledger.
func (s *State) Usage(ctx context.Context, p *Principal, q UsageQuery) (*UsageReport, error) {
	return store.Read(ctx, s.store, func(tx *store.Tx) (*UsageReport, error) {
		var tenants []*store.Tenant
		switch {
		case q.Tenant != "":
			t, err := tenantFor(ctx, tx, p, q.Tenant)
			if err != nil {
				return nil, err
			}
			tenants = []*store.Tenant{t}
		case p.IsOperator():
		case p != nil && p.TenantID != "":
			t, err := tenantFor(ctx, tx, p, p.TenantID)
			if err != nil {
				return nil, err
			}
			tenants = []*store.Tenant{t}
		default:
			return nil, errorf(CodeForbidden, "this needs an API token")
		}
		var f fields
		sq := store.UsageQuery{Step: q.By}
		if len(tenants) == 1 {
			sq.TenantID = tenants[0].ID
		}
		if q.Site != "" {
			if sq.TenantID == "" {
				f.add("site", "needs a tenant")
			} else if site, err := siteFor(ctx, tx, sq.TenantID, q.Site); err != nil {
				f.add("site", "no site %q", q.Site)
			} else {
				sq.SiteID = site.ID
			}
		}
		limit := 31 * 24 * time.Hour
		switch q.By {
		case store.UsageHour:
		case 24 * time.Hour:
			limit = 400 * 24 * time.Hour
		default:
			f.add("by", "want hour or day, got %s", q.By)
		}
		sq.From = q.From.UTC().Truncate(max(q.By, store.UsageHour))
		sq.To = q.To.UTC().Truncate(max(q.By, store.UsageHour))
		if sq.To.Before(q.To) {
			sq.To = sq.To.Add(max(q.By, store.UsageHour))
		}
		if !sq.To.After(sq.From) {
			f.add("to", "must be after from (%s), got %s", q.From.Format(time.RFC3339), q.To.Format(time.RFC3339))
		} else if sq.To.Sub(sq.From) > limit {
			f.add("from", "at most %s by %s", limit, fmtBy(q.By))
		}
		if err := f.err(); err != nil {
			return nil, err
		}
		rows, err := tx.ListUsage(ctx, sq)
		if err != nil {
			return nil, err
		}
		if len(rows) > MaxUsageRows {
			return nil, &Error{Code: CodeInvalid, Msg: "invalid input", Fields: []FieldError{{"from", fmt.Sprintf("more than %d rows: narrow the range or the tenants, or ask by day", MaxUsageRows)}}}
		}
		if tenants == nil {
			if tenants, err = tx.ListTenants(ctx); err != nil {
				return nil, err
			}
		}
		tnames, snames := map[string]string{}, map[string]string{}
		for _, t := range tenants {
			tnames[t.ID] = t.Name
			sites, err := tx.ListSites(ctx, t.ID)
			if err != nil {
				return nil, err
			}
			for _, st := range sites {
				snames[st.ID] = st.Name
			}
		}
		rep := &UsageReport{From: sq.From, To: sq.To, By: q.By, Lines: make([]UsageLine, len(rows))}
		for i, r := range rows {
			rep.Lines[i] = UsageLine{UsageRow: r, TenantName: tnames[r.TenantID], SiteName: snames[r.SiteID], PeerSiteName: snames[r.PeerSiteID]}
		}
		return rep, nil
	})
}

func fmtBy(d time.Duration) string {
	if d == 24*time.Hour {
		return "day"
	}
	return "hour"
}

// TenantUpdate changes a tenant; nil fields are left as they are.
type TenantUpdate struct {
	// BillingCustomer is the tenant's customer at the metering API; ""
	// removes it (the tenant's usage events then become dead letters).
	BillingCustomer *string
}

// UpdateTenant changes a tenant. Operators only: the billing customer
// decides who pays. Nothing an appliance sees depends on it, so it
// records no change.
func (s *State) UpdateTenant(ctx context.Context, p *Principal, ref string, up TenantUpdate) (*store.Tenant, error) {
	return store.Write(ctx, s.store, func(tx *store.Tx) (*store.Tenant, error) {
		t, err := tenantFor(ctx, tx, p, ref)
		if err != nil {
			return nil, err
		}
		if err := requireOperator(p); err != nil {
			return nil, err
		}
		if up.BillingCustomer != nil {
			c := *up.BillingCustomer
			var f fields
			if len(c) > MaxBillingCustomer || slices.ContainsFunc([]rune(c), func(r rune) bool { return !unicode.IsPrint(r) }) {
				f.add("billing_customer", "want at most %d printable characters, got %q", MaxBillingCustomer, c)
			}
			if err := f.err(); err != nil {
				return nil, err
			}
			if err := tx.UpdateTenantBillingCustomer(ctx, t.ID, c); err != nil {
				return nil, storeErr(err)
			}
			t.BillingCustomer = c
		}
		return t, nil
	})
}

// Export administration (operators only).

// ExportQueue sums up the export outbox.
func (s *State) ExportQueue(ctx context.Context, p *Principal) (store.OutboxStats, error) {
	if err := requireOperator(p); err != nil {
		return store.OutboxStats{}, err
	}
	return s.OutboxStats(ctx)
}

// DeadLetters returns up to limit dead letters, newest first.
func (s *State) DeadLetters(ctx context.Context, p *Principal, limit int) ([]*store.OutboxEntry, error) {
	if err := requireOperator(p); err != nil {
		return nil, err
	}
	return store.Read(ctx, s.store, func(tx *store.Tx) ([]*store.OutboxEntry, error) {
		return tx.ListOutbox(ctx, store.OutboxDead, limit)
	})
}

// RetryDeadLetters makes dead letters pending again, with their attempts
// reset: those named by event id, or all when ids is nil. It returns how
// many.
func (s *State) RetryDeadLetters(ctx context.Context, p *Principal, ids []string) (int64, error) {
	if err := requireOperator(p); err != nil {
		return 0, err
	}
	return store.WriteUsage(ctx, s.store, func(tx *store.Tx) (int64, error) { return tx.RetryOutbox(ctx, ids, s.now()) })
}

// The export worker's side of the outbox (controller/metering). These
// are internal: no principal.

// OutboxStats sums up the export outbox.
func (s *State) OutboxStats(ctx context.Context) (store.OutboxStats, error) {
	return store.Read(ctx, s.store, func(tx *store.Tx) (store.OutboxStats, error) { return tx.OutboxStats(ctx) })
}

// ClaimExports gives owner up to limit due entries for lease (see
// store.Tx.ClaimOutbox).
func (s *State) ClaimExports(ctx context.Context, owner string, limit int, lease time.Duration) ([]*store.OutboxEntry, error) {
	return store.WriteUsage(ctx, s.store, func(tx *store.Tx) ([]*store.OutboxEntry, error) {
		return tx.ClaimOutbox(ctx, owner, limit, s.now(), lease)
	})
}

// FinishExports deletes the entries that were sent and records what
// became of the others, in one transaction.
func (s *State) FinishExports(ctx context.Context, sent []string, failed []store.OutboxUpdate) error {
	_, err := store.WriteUsage(ctx, s.store, func(tx *store.Tx) (struct{}, error) {
		if _, err := tx.DeleteOutbox(ctx, sent); err != nil {
			return struct{}{}, err
		}
		return struct{}{}, tx.UpdateOutbox(ctx, failed, s.now())
	})
	return err
}

// ExportTenants returns the name and billing customer of the tenants among
// ids that exist.
func (s *State) ExportTenants(ctx context.Context, ids []string) (map[string]store.TenantBilling, error) {
	return store.Read(ctx, s.store, func(tx *store.Tx) (map[string]store.TenantBilling, error) {
		return tx.BillingCustomers(ctx, ids)
	})
}
