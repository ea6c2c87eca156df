package api

import (
	"time"

	"github.com/causeway-net/causeway/controller/state"
	"github.com/causeway-net/causeway/controller/store"
)

// The response bodies. Times are RFC 3339 in UTC; an absent time is
// omitted.

type list[T any] struct {
	Items []T `json:"items"`
}

func listOf[S, T any](in []S, view func(S) T) list[T] {
	out := list[T]{Items: make([]T, len(in))}
	for i, v := range in {
		out.Items[i] = view(v)
	}
	return out
}

func ts(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}

type tenantView struct {
	ID        string     `json:"id"`
	Name      string     `json:"name"`
	CreatedAt *time.Time `json:"created_at"`
	// BillingCustomer is the tenant's customer at the metering API.
	BillingCustomer string `json:"billing_customer"`
}

func viewTenant(t *store.Tenant) tenantView {
	return tenantView{ID: t.ID, Name: t.Name, CreatedAt: ts(t.CreatedAt), BillingCustomer: t.BillingCustomer}
}

type siteView struct {
	ID          string     `json:"id"`
	TenantID    string     `json:"tenant_id"`
	Name        string     `json:"name"`
	Kind        string     `json:"kind"`
	LANPrefixes []string   `json:"lan_prefixes"`
	CreatedAt   *time.Time `json:"created_at"`
}

func viewSite(s *store.Site) siteView {
	v := siteView{ID: s.ID, TenantID: s.TenantID, Name: s.Name, Kind: string(s.Kind), LANPrefixes: []string{}, CreatedAt: ts(s.CreatedAt)}
	for _, p := range s.LANPrefixes {
		v.LANPrefixes = append(v.LANPrefixes, p.String())
	}
	return v
}

type applianceView struct {
	ID            string     `json:"id"`
	TenantID      string     `json:"tenant_id"`
	SiteID        string     `json:"site_id"`
	Name          string     `json:"name"`
	PublicKey     string     `json:"public_key"`
	OverlayAddr   string     `json:"overlay_addr"`
	Endpoints     []string   `json:"endpoints"`
	State         string     `json:"state"`
	Connected     bool       `json:"connected"`
	NetmapVersion uint64     `json:"netmap_version"`
	CreatedAt     *time.Time `json:"created_at"`
	LastSeenAt    *time.Time `json:"last_seen_at,omitempty"`
	RevokedAt     *time.Time `json:"revoked_at,omitempty"`
	// Priority and Drained are the appliance's place in its site's pair.
	Priority  int        `json:"priority"`
	Drained   bool       `json:"drained"`
	DrainedAt *time.Time `json:"drained_at,omitempty"`
}

func viewAppliance(a *state.ApplianceInfo) applianceView {
	v := applianceView{ID: a.ID, TenantID: a.TenantID, SiteID: a.SiteID, Name: a.Name, PublicKey: a.PublicKey.String(),
		OverlayAddr: a.OverlayAddr.String(), Endpoints: []string{}, State: string(a.State), Connected: a.Connected,
		NetmapVersion: a.NetmapVersion, CreatedAt: ts(a.CreatedAt), LastSeenAt: ts(a.LastSeenAt), RevokedAt: ts(a.RevokedAt),
		Priority: a.Priority, Drained: !a.DrainedAt.IsZero(), DrainedAt: ts(a.DrainedAt)}
	for _, e := range a.Endpoints {
		v.Endpoints = append(v.Endpoints, e.String())
	}
	return v
}

type enrollmentTokenView struct {
	ID          string     `json:"id"`
	TenantID    string     `json:"tenant_id"`
	SiteID      string     `json:"site_id"`
	Description string     `json:"description"`
	CreatedAt   *time.Time `json:"created_at"`
	ExpiresAt   *time.Time `json:"expires_at"`
	UsedAt      *time.Time `json:"used_at,omitempty"`
	ApplianceID string     `json:"appliance_id,omitempty"`
	// Token is the secret, present only in the response that creates it.
	Token string `json:"token,omitempty"`
}

func viewEnrollmentToken(e *store.EnrollmentToken) enrollmentTokenView {
	return enrollmentTokenView{ID: e.ID, TenantID: e.TenantID, SiteID: e.SiteID, Description: e.Description,
		CreatedAt: ts(e.CreatedAt), ExpiresAt: ts(e.ExpiresAt), UsedAt: ts(e.UsedAt), ApplianceID: e.ApplianceID}
}

type apiTokenView struct {
	ID          string     `json:"id"`
	Scope       string     `json:"scope"`
	TenantID    string     `json:"tenant_id,omitempty"`
	Description string     `json:"description"`
	CreatedAt   *time.Time `json:"created_at"`
	ExpiresAt   *time.Time `json:"expires_at,omitempty"`
	LastUsedAt  *time.Time `json:"last_used_at,omitempty"`
	// Token is the secret, present only in the response that creates it.
	Token string `json:"token,omitempty"`
}

func viewAPIToken(a *store.APIToken) apiTokenView {
	return apiTokenView{ID: a.ID, Scope: string(a.Scope), TenantID: a.TenantID, Description: a.Description,
		CreatedAt: ts(a.CreatedAt), ExpiresAt: ts(a.ExpiresAt), LastUsedAt: ts(a.LastUsedAt)}
}

type slaView struct {
	MaxLossPercent  float64 `json:"max_loss_percent"`
	MaxRTTMillis    int64   `json:"max_rtt_ms"`
	MaxJitterMillis int64   `json:"max_jitter_ms"`
}

func viewSLA(s store.SLA) slaView {
	return slaView{MaxLossPercent: s.MaxLossPercent, MaxRTTMillis: s.MaxRTTMillis, MaxJitterMillis: s.MaxJitterMillis}
}

type slaOverrideView struct {
	SiteA     string     `json:"site_a"`
	SiteAName string     `json:"site_a_name"`
	SiteB     string     `json:"site_b"`
	SiteBName string     `json:"site_b_name"`
	SLA       slaView    `json:"sla"`
	UpdatedAt *time.Time `json:"updated_at"`
}

func viewSLAOverride(o *state.SLAOverride) slaOverrideView {
	return slaOverrideView{SiteA: o.SiteA, SiteAName: o.SiteAName, SiteB: o.SiteB, SiteBName: o.SiteBName,
		SLA: viewSLA(o.SLA), UpdatedAt: ts(o.UpdatedAt)}
}

// probeKeyView describes a probe key; its secret only ever travels in
// netmaps.
type probeKeyView struct {
	ID        uint32     `json:"id"`
	Role      string     `json:"role"`
	CreatedAt *time.Time `json:"created_at"`
	// CurrentFrom, for the next key, is when a rotation may make it
	// current.
	CurrentFrom *time.Time `json:"current_from,omitempty"`
}

func viewProbeKeys(ks []state.ProbeKeyInfo) list[probeKeyView] {
	return listOf(ks, func(k state.ProbeKeyInfo) probeKeyView {
		return probeKeyView{ID: uint32(k.ID), Role: string(k.Role), CreatedAt: ts(k.CreatedAt), CurrentFrom: ts(k.CurrentFrom)}
	})
}
