package store

import (
	"net/netip"
	"time"

	"github.com/causeway-net/causeway/dataplane/wgkey"
)

// Tenant is one customer; everything else belongs to exactly one tenant.
type Tenant struct {
	ID        string
	Name      string
	CreatedAt time.Time
	// SLA applies to every pair of the tenant's sites without an override.
	SLA SLA
	// BillingCustomer is the tenant's customer at the metering API; ""
	// until an operator sets it.
	BillingCustomer string
}

// SLA holds the thresholds a path must meet (see probes.SLA); 0 means no
// limit.
type SLA struct {
	MaxLossPercent  float64
	MaxRTTMillis    int64
	MaxJitterMillis int64
}

// SLAOverride is the SLA of one pair of sites, in both directions. SiteA is
// the smaller of the two ids.
type SLAOverride struct {
	TenantID     string
	SiteA, SiteB string
	SLA          SLA
	UpdatedAt    time.Time
}

// ProbeKeyRole is what a probe key is for.
type ProbeKeyRole string

const (
	// ProbeKeyCurrent signs every probe request.
	ProbeKeyCurrent ProbeKeyRole = "current"
	// ProbeKeyNext is accepted, not used to sign: a rotation distributes
	// it before it becomes current.
	ProbeKeyNext ProbeKeyRole = "next"
	// ProbeKeyPrevious is the key current before the last rotation, still
	// accepted from appliances that have not switched yet.
	ProbeKeyPrevious ProbeKeyRole = "previous"
)

// ProbeKey is one of a tenant's probe keys.
type ProbeKey struct {
	TenantID string
	// ID is the key id probes carry (a uint32).
	ID        int64
	Secret    [32]byte
	Role      ProbeKeyRole
	CreatedAt time.Time
}

// SiteKind says what a site is; it decides defaults such as keepalives.
type SiteKind string

const (
	SiteOffice SiteKind = "office"
	SiteHome   SiteKind = "home"
	SiteVPC    SiteKind = "vpc"
	SiteRemote SiteKind = "remote"
)

// SiteKinds lists every valid kind.
var SiteKinds = []SiteKind{SiteOffice, SiteHome, SiteVPC, SiteRemote}

// Valid reports whether k is one of SiteKinds.
func (k SiteKind) Valid() bool {
	for _, v := range SiteKinds {
		if k == v {
			return true
		}
	}
	return false
}

// Site is one location of a tenant, with the LAN prefixes behind it.
type Site struct {
	ID          string
	TenantID    string
	Name        string
	Kind        SiteKind
	LANPrefixes []netip.Prefix
	CreatedAt   time.Time
}

// ApplianceState is the life-cycle state of an appliance.
type ApplianceState string

const (
	// ApplianceActive: enrolled, holds a valid credential, in every peer's
	// netmap.
	ApplianceActive ApplianceState = "active"
	// ApplianceRevoked: credential refused, removed from every netmap. The
	// row stays for the record; its overlay address is not reused.
	ApplianceRevoked ApplianceState = "revoked"
)

// Appliance is one enrolled device at a site.
type Appliance struct {
	ID          string
	TenantID    string
	SiteID      string
	Name        string
	PublicKey   wgkey.PublicKey
	OverlayAddr netip.Addr
	// Endpoints are the underlay addresses the appliance is reachable at,
	// one per uplink that has a public address; empty behind NAT.
	Endpoints []netip.AddrPort
	State     ApplianceState
	// CredentialHash is the hex SHA-256 of the device credential; the
	// credential itself is never stored.
	CredentialHash string
	CreatedAt      time.Time
	LastSeenAt     time.Time
	RevokedAt      time.Time
	// Priority is the appliance's priority in its site's pair (higher
	// preferred); DrainedAt, when set, is when it was drained (see
	// pair.go).
	Priority  int
	DrainedAt time.Time
}

// EnrollmentToken is a one-time, expiring permission to enrol one appliance
// into one site.
type EnrollmentToken struct {
	ID          string
	TenantID    string
	SiteID      string
	SecretHash  string
	Description string
	CreatedAt   time.Time
	ExpiresAt   time.Time
	// UsedAt is zero until the token is used, then ApplianceID says by whom.
	UsedAt      time.Time
	ApplianceID string
}

// Scope is what an API token may do.
type Scope string

const (
	// ScopeOperator may do anything, across tenants.
	ScopeOperator Scope = "operator"
	// ScopeTenantAdmin may manage one tenant and sees nothing of others.
	ScopeTenantAdmin Scope = "tenant-admin"
)

// APIToken is a bearer token for the REST API.
type APIToken struct {
	ID         string
	SecretHash string
	Scope      Scope
	// TenantID is set for ScopeTenantAdmin and empty for ScopeOperator.
	TenantID    string
	Description string
	CreatedAt   time.Time
	// ExpiresAt zero means never.
	ExpiresAt  time.Time
	LastUsedAt time.Time
}

// Change is one entry of the change feed: something in TenantID changed
// that may alter the netmaps of its appliances.
type Change struct {
	ID       int64
	TenantID string
	// Kind and Subject say what changed ("site.update", site id); they are
	// informational: followers reload the tenant.
	Kind      string
	Subject   string
	RequestID string
	CreatedAt time.Time
}
