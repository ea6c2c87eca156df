// Package metering exports the usage ledger to an external metering API:
// a worker takes the entries of the outbox that ingestion writes (in the
// same transaction as the ledger increment, see state.ReportUsage), sends
// them as CloudEvents over HTTP in structured batch mode, and deletes
// what the API accepted. Failures are retried with exponential backoff
// and equal jitter, a 429's Retry-After is honoured, and entries that
// cannot be delivered become dead letters with the reason. Entries are
// claimed for a lease before they are sent, so that of several controller
// replicas only one sends a given entry at a time; an entry sent again
// (after a crash between sending and recording it) carries the same
// event id, so the receiver can drop the copy.
//
// The export's own HTTP traffic is the controller's, not a tenant's: it
// never counts as usage.
package metering

import (
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/causeway-net/causeway/controller/store"
)

// EventType is the CloudEvents type of a usage event.
const EventType = "dev.causeway.usage.v1"

// DefaultMeters are the meters exported by default, by state.MeterKey.
var DefaultMeters = map[string]string{
	"overlay.tx": "causeway.overlay.tx.bytes",
	"overlay.rx": "causeway.overlay.rx.bytes",
	"gateway.tx": "causeway.gateway.tx.bytes",
	"gateway.rx": "causeway.gateway.rx.bytes",
}

var meterNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$`)

// ParseMeters reads the list of exported meters: comma-separated
// METER.DIRECTION=NAME (overlay.tx=causeway.overlay.tx.bytes), where
// METER is overlay or gateway and DIRECTION tx or rx. Meters not listed
// are not exported; "none" exports none.
func ParseMeters(s string) (map[string]string, error) {
	out := map[string]string{}
	s = strings.TrimSpace(s)
	if s == "none" {
		return out, nil
	}
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		k, name, ok := strings.Cut(item, "=")
		k, name = strings.TrimSpace(k), strings.TrimSpace(name)
		if !ok {
			return nil, fmt.Errorf("%q: want METER.DIRECTION=NAME", item)
		}
		m, d, _ := strings.Cut(k, ".")
		if (m != store.MeterOverlay && m != store.MeterGateway) || (d != store.DirectionTx && d != store.DirectionRx) {
			return nil, fmt.Errorf("%q: want overlay.tx, overlay.rx, gateway.tx or gateway.rx before '='", item)
		}
		if !meterNameRE.MatchString(name) {
			return nil, fmt.Errorf("%q: the name must be 1-128 letters, digits and . _ : / -", item)
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("%s is listed twice", k)
		}
		out[k] = name
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no meter listed (say none to export none)")
	}
	return out, nil
}

// FormatMeters is the inverse of ParseMeters, sorted.
func FormatMeters(m map[string]string) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + m[k]
	}
	return strings.Join(parts, ",")
}

// UsageData is the data of a usage event (application/json).
type UsageData struct {
	Tenant     string `json:"tenant"`      // tenant id
	TenantName string `json:"tenant_name"` // at the time of sending
	Customer   string `json:"customer"`    // the tenant's billing customer
	Site       string `json:"site"`        // site id
	Appliance  string `json:"appliance"`   // the appliance that reported it
	Meter      string `json:"meter"`       // the exported meter name
	Direction  string `json:"direction"`   // tx or rx
	// Hour is the start of the UTC hour the usage belongs to; Start and
	// End span the records summed.
	Hour    time.Time `json:"hour"`
	Start   time.Time `json:"start"`
	End     time.Time `json:"end"`
	Bytes   int64     `json:"bytes"`
	Packets int64     `json:"packets"`
	Records int64     `json:"records"`
}

// Source is the CloudEvents source of a site's usage events.
func Source(tenantID, siteID string) string {
	return "/causeway/tenants/" + tenantID + "/sites/" + siteID
}

// NewEvent builds the CloudEvent that carries an outbox entry. Its id is
// the entry's (state.UsageEventID), the same for every attempt; its
// subject the billing customer; its time the start of the first record.
func NewEvent(e *store.OutboxEntry, tenant store.TenantBilling) (event.Event, error) {
	ev := event.New()
	ev.SetID(e.EventID)
	ev.SetSource(Source(e.TenantID, e.SiteID))
	ev.SetType(EventType)
	ev.SetSubject(tenant.Customer)
	ev.SetTime(e.Start)
	err := ev.SetData(event.ApplicationJSON, UsageData{
		Tenant: e.TenantID, TenantName: tenant.Name, Customer: tenant.Customer, Site: e.SiteID, Appliance: e.ApplianceID,
		Meter: e.MeterName, Direction: e.Direction, Hour: e.Hour, Start: e.Start, End: e.End,
		Bytes: e.Bytes, Packets: e.Packets, Records: e.Records,
	})
	if err != nil {
		return ev, err
	}
	return ev, ev.Validate()
}

// sortedIDs returns the entries' event ids.
func sortedIDs(es []*store.OutboxEntry) []string {
	ids := make([]string, len(es))
	for i, e := range es {
		ids[i] = e.EventID
	}
	slices.Sort(ids)
	return ids
}
