package state_test

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/causeway-net/causeway/controller/netmap"
	"github.com/causeway-net/causeway/controller/push"
	"github.com/causeway-net/causeway/controller/state"
	"github.com/causeway-net/causeway/controller/store"
	"github.com/causeway-net/causeway/controller/store/storetest"
	"github.com/causeway-net/causeway/dataplane/wgkey"
)

var (
	ctx      = context.Background()
	operator = &state.Principal{TokenID: "at_test", Scope: store.ScopeOperator}
)

// clock is a settable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newState(t *testing.T, dsn string, c *clock) *state.State {
	t.Helper()
	opts := state.Options{Store: storetest.Open(t, dsn), PollInterval: 50 * time.Millisecond}
	if c != nil {
		opts.TestOnlyNow = c.Now
	}
	s, err := state.New(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func pfx(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func key(t *testing.T) wgkey.PublicKey {
	k, err := wgkey.NewPrivate()
	if err != nil {
		t.Fatal(err)
	}
	return k.Public()
}

func wantCode(t *testing.T, err error, code state.Code, contains string) {
	t.Helper()
	if got := state.ErrorCode(err); got != code {
		t.Fatalf("err = %v (code %q), want code %q", err, got, code)
	}
	if !strings.Contains(err.Error(), contains) {
		t.Fatalf("err = %q, want it to mention %q", err, contains)
	}
}

// enroll creates a token for the site and enrols a fresh key with it.
func enroll(t *testing.T, s *state.State, tenant, site, name string) *state.Enrolled {
	t.Helper()
	_, tok := must2(t)(s.CreateEnrollmentToken(ctx, operator, tenant, state.EnrollmentTokenInput{Site: site}))
	return must[*state.Enrolled](t)(s.Enroll(ctx, state.EnrollInput{Token: tok, Name: name, PublicKey: key(t),
		Endpoints: []netip.AddrPort{netip.MustParseAddrPort("198.18.0.1:51820")}}))
}

func must2(t *testing.T) func(*store.EnrollmentToken, string, error) (*store.EnrollmentToken, string) {
	return func(e *store.EnrollmentToken, s string, err error) (*store.EnrollmentToken, string) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return e, s
	}
}

func TestSitesAndPrefixes(t *testing.T) {
	t.Parallel()
	storetest.Engines(t, func(t *testing.T, dsn string) {
		t.Parallel()
		s := newState(t, dsn, nil)
		must[*store.Tenant](t)(s.CreateTenant(ctx, operator, "acme"))
		must[*store.Tenant](t)(s.CreateTenant(ctx, operator, "globex"))
		_, err := s.CreateTenant(ctx, operator, "acme")
		wantCode(t, err, state.CodeConflict, `a tenant named "acme" exists`)
		_, err = s.CreateTenant(ctx, operator, "Bad_Name")
		wantCode(t, err, state.CodeInvalid, "name: want 1-63 lower-case")

		hq := must[*store.Site](t)(s.CreateSite(ctx, operator, "acme", state.SiteInput{Name: "hq", Kind: store.SiteOffice, LANPrefixes: pfx("10.1.0.0/16")}))
		_, err = s.CreateSite(ctx, operator, "acme", state.SiteInput{Name: "br", Kind: store.SiteOffice, LANPrefixes: pfx("192.168.1.0/24", "10.1.2.0/24")})
		wantCode(t, err, state.CodeInvalid, `lan_prefixes[1]: 10.1.2.0/24 overlaps 10.1.0.0/16 of site "hq"`)
		_, err = s.CreateSite(ctx, operator, "acme", state.SiteInput{Name: "br", Kind: store.SiteOffice, LANPrefixes: pfx("10.2.0.0/16", "10.2.1.0/24")})
		wantCode(t, err, state.CodeInvalid, "lan_prefixes[1]: 10.2.1.0/24 overlaps 10.2.0.0/16 (lan_prefixes[0])")
		_, err = s.CreateSite(ctx, operator, "acme", state.SiteInput{Name: "hq", Kind: "garage"})
		wantCode(t, err, state.CodeInvalid, `kind: want one of`)
		_, err = s.CreateSite(ctx, operator, "acme", state.SiteInput{Name: "cgn", Kind: store.SiteHome, LANPrefixes: pfx("100.100.0.0/16")})
		wantCode(t, err, state.CodeInvalid, "overlaps the overlay range")

		// Another tenant may reuse the same private prefixes.
		must[*store.Site](t)(s.CreateSite(ctx, operator, "globex", state.SiteInput{Name: "hq", Kind: store.SiteOffice, LANPrefixes: pfx("10.1.0.0/16")}))

		br := must[*store.Site](t)(s.CreateSite(ctx, operator, "acme", state.SiteInput{Name: "br", Kind: store.SiteHome, LANPrefixes: pfx("10.2.0.0/24")}))
		grow := pfx("10.0.0.0/8")
		_, err = s.UpdateSite(ctx, operator, "acme", "br", state.SiteUpdate{LANPrefixes: &grow})
		wantCode(t, err, state.CodeInvalid, `10.0.0.0/8 overlaps 10.1.0.0/16 of site "hq"`)
		moved := pfx("10.3.0.0/24", "fd00:3::/64")
		got := must[*store.Site](t)(s.UpdateSite(ctx, operator, "acme", br.ID, state.SiteUpdate{LANPrefixes: &moved}))
		if len(got.LANPrefixes) != 2 || got.Kind != store.SiteHome {
			t.Errorf("updated site = %+v", got)
		}
		// Updating a site against its own prefixes is fine.
		same := pfx("10.1.0.0/16")
		must[*store.Site](t)(s.UpdateSite(ctx, operator, "acme", hq.ID, state.SiteUpdate{LANPrefixes: &same}))

		sites := must[[]*store.Site](t)(s.ListSites(ctx, operator, "acme"))
		if len(sites) != 2 {
			t.Errorf("%d sites", len(sites))
		}
		enroll(t, s, "acme", "hq", "hq-1")
		wantCode(t, s.DeleteSite(ctx, operator, "acme", "hq"), state.CodeConflict, "still has 1 live appliance")
		if err := s.DeleteSite(ctx, operator, "acme", "br"); err != nil {
			t.Fatal(err)
		}
		_, err = s.GetSite(ctx, operator, "acme", "br")
		wantCode(t, err, state.CodeNotFound, `site "br" not found`)
	})
}

func TestEnrollment(t *testing.T) {
	t.Parallel()
	storetest.Engines(t, func(t *testing.T, dsn string) {
		t.Parallel()
		c := &clock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
		s := newState(t, dsn, c)
		for _, n := range []string{"acme", "globex"} {
			must[*store.Tenant](t)(s.CreateTenant(ctx, operator, n))
			must[*store.Site](t)(s.CreateSite(ctx, operator, n, state.SiteInput{Name: "hq", Kind: store.SiteOffice, LANPrefixes: pfx("10.1.0.0/24")}))
		}

		// Good.
		et, tok := must2(t)(s.CreateEnrollmentToken(ctx, operator, "acme", state.EnrollmentTokenInput{Site: "hq", TTL: time.Hour}))
		if !strings.HasPrefix(tok, state.SecretEnrollment) || strings.Contains(et.SecretHash, tok) {
			t.Fatalf("token %q / hash %q", tok, et.SecretHash)
		}
		k := key(t)
		e := must[*state.Enrolled](t)(s.Enroll(ctx, state.EnrollInput{Token: tok, Tenant: "acme", Site: "hq", PublicKey: k}))
		if e.Appliance.Name != "hq-1" || e.Appliance.OverlayAddr != netip.MustParseAddr("100.64.0.1") || e.Netmap == nil {
			t.Fatalf("enrolled %+v, netmap %+v", e.Appliance, e.Netmap)
		}
		if !strings.HasPrefix(e.Credential, state.SecretDevice) || e.Appliance.CredentialHash == e.Credential {
			t.Fatalf("credential %q stored as %q", e.Credential, e.Appliance.CredentialHash)
		}
		if d, err := s.AuthenticateDevice(ctx, e.Credential); err != nil || d.ApplianceID != e.Appliance.ID {
			t.Fatalf("AuthenticateDevice = %+v, %v", d, err)
		}

		// Reused.
		_, err := s.Enroll(ctx, state.EnrollInput{Token: tok, PublicKey: key(t)})
		wantCode(t, err, state.CodeTokenUsed, "already used")

		// Expired.
		_, tok2 := must2(t)(s.CreateEnrollmentToken(ctx, operator, "acme", state.EnrollmentTokenInput{Site: "hq", TTL: time.Minute}))
		c.Add(2 * time.Minute)
		_, err = s.Enroll(ctx, state.EnrollInput{Token: tok2, PublicKey: key(t)})
		wantCode(t, err, state.CodeTokenExpired, "expired at")

		// Wrong tenant, wrong site, wrong token.
		_, tok3 := must2(t)(s.CreateEnrollmentToken(ctx, operator, "acme", state.EnrollmentTokenInput{Site: "hq"}))
		_, err = s.Enroll(ctx, state.EnrollInput{Token: tok3, Tenant: "globex", PublicKey: key(t)})
		wantCode(t, err, state.CodeTokenScope, `tenant: the token is not for tenant "globex"`)
		_, err = s.Enroll(ctx, state.EnrollInput{Token: tok3, Site: "br", PublicKey: key(t)})
		wantCode(t, err, state.CodeTokenScope, `site: the token is not for site "br"`)
		_, err = s.Enroll(ctx, state.EnrollInput{Token: tok3 + "x", PublicKey: key(t)})
		wantCode(t, err, state.CodeTokenInvalid, "not recognised")
		// A refused attempt does not spend the token; the same key twice is refused.
		_, err = s.Enroll(ctx, state.EnrollInput{Token: tok3, PublicKey: k})
		wantCode(t, err, state.CodeConflict, `public_key: appliance "hq-1" already has this key`)
		_, err = s.Enroll(ctx, state.EnrollInput{Token: tok3, PublicKey: key(t), Name: "hq-1"})
		wantCode(t, err, state.CodeConflict, `name: the tenant already has an appliance named "hq-1"`)
		_, err = s.Enroll(ctx, state.EnrollInput{Token: tok3})
		wantCode(t, err, state.CodeInvalid, "public_key: required")
		e2 := must[*state.Enrolled](t)(s.Enroll(ctx, state.EnrollInput{Token: tok3, PublicKey: key(t)}))
		if e2.Appliance.Name != "hq-2" || e2.Appliance.OverlayAddr != netip.MustParseAddr("100.64.0.2") {
			t.Errorf("second appliance %+v", e2.Appliance)
		}

		// Overlay addresses are per tenant.
		_, tokG := must2(t)(s.CreateEnrollmentToken(ctx, operator, "globex", state.EnrollmentTokenInput{Site: "hq"}))
		eg := must[*state.Enrolled](t)(s.Enroll(ctx, state.EnrollInput{Token: tokG, PublicKey: key(t)}))
		if eg.Appliance.OverlayAddr != netip.MustParseAddr("100.64.0.1") {
			t.Errorf("first appliance of globex got %s", eg.Appliance.OverlayAddr)
		}

		// Token records.
		ets := must[[]*store.EnrollmentToken](t)(s.ListEnrollmentTokens(ctx, operator, "acme"))
		if len(ets) != 3 {
			t.Errorf("%d enrollment tokens", len(ets))
		}
		got := must[*store.EnrollmentToken](t)(s.GetEnrollmentToken(ctx, operator, "acme", et.ID))
		if got.ApplianceID != e.Appliance.ID || got.UsedAt.IsZero() {
			t.Errorf("used token record %+v", got)
		}
		_, _, err = s.CreateEnrollmentToken(ctx, operator, "acme", state.EnrollmentTokenInput{Site: "nowhere"})
		wantCode(t, err, state.CodeInvalid, `site: site "nowhere" not found`)
		_, _, err = s.CreateEnrollmentToken(ctx, operator, "acme", state.EnrollmentTokenInput{Site: "hq", TTL: 90 * 24 * time.Hour})
		wantCode(t, err, state.CodeInvalid, "ttl: want 1m to")
	})
}

func TestNetmaps(t *testing.T) {
	t.Parallel()
	storetest.Engines(t, func(t *testing.T, dsn string) {
		t.Parallel()
		s := newState(t, dsn, nil)
		must[*store.Tenant](t)(s.CreateTenant(ctx, operator, "acme"))
		must[*store.Tenant](t)(s.CreateTenant(ctx, operator, "globex"))
		must[*store.Site](t)(s.CreateSite(ctx, operator, "acme", state.SiteInput{Name: "hq", Kind: store.SiteOffice, LANPrefixes: pfx("10.1.0.0/24")}))
		must[*store.Site](t)(s.CreateSite(ctx, operator, "acme", state.SiteInput{Name: "home", Kind: store.SiteHome, LANPrefixes: pfx("10.9.0.0/24")}))
		must[*store.Site](t)(s.CreateSite(ctx, operator, "globex", state.SiteInput{Name: "hq", Kind: store.SiteOffice, LANPrefixes: pfx("10.1.0.0/24")}))
		hq := enroll(t, s, "acme", "hq", "hq-1")
		home := enroll(t, s, "acme", "home", "home-1")
		other := enroll(t, s, "globex", "hq", "g-1")

		nm := func(e *state.Enrolled) *netmap.Netmap {
			t.Helper()
			return must[*netmap.Netmap](t)(s.ApplianceNetmap(ctx, operator, e.Appliance.TenantID, e.Appliance.ID))
		}
		m := nm(hq)
		if len(m.Peers) != 1 || m.Peers[0].Name != "home-1" || m.Peers[0].Prefixes[0] != netip.MustParsePrefix("10.9.0.0/24") ||
			m.Peers[0].PublicKey != home.Appliance.PublicKey || m.Peers[0].Keepalive != 0 {
			t.Fatalf("hq netmap peers %+v", m.Peers)
		}
		if m.LANPrefixes[0] != netip.MustParsePrefix("10.1.0.0/24") || m.OverlayAddr != hq.Appliance.OverlayAddr {
			t.Fatalf("hq netmap self %+v", m)
		}
		// A home site keeps NAT mappings open.
		if p := nm(home).Peers; len(p) != 1 || p[0].Keepalive != state.DefaultKeepalive {
			t.Fatalf("home netmap peers %+v", p)
		}
		if len(nm(other).Peers) != 0 {
			t.Fatalf("globex sees %+v", nm(other).Peers)
		}
		// The wire form decodes strictly.
		data, _ := m.MarshalJSON()
		if _, err := netmap.Decode(data); err != nil {
			t.Fatalf("compiled netmap does not decode: %v", err)
		}

		// A change that alters no netmap recompiles nothing.
		v0, vOther := nm(hq).Version, nm(other).Version
		if _, _, err := s.CreateEnrollmentToken(ctx, operator, "acme", state.EnrollmentTokenInput{Site: "hq"}); err != nil {
			t.Fatal(err)
		}
		if nm(hq).Version != v0 {
			t.Errorf("creating a token bumped the netmap version")
		}

		// A site change reaches the tenant's other appliances, carries the
		// request id, and leaves other tenants alone.
		moved := pfx("10.9.1.0/24")
		rctx := state.WithRequestID(ctx, "req-42")
		must[*store.Site](t)(s.UpdateSite(rctx, operator, "acme", "home", state.SiteUpdate{LANPrefixes: &moved}))
		m = nm(hq)
		if m.Version <= v0 || m.RequestID != "req-42" || m.Peers[0].Prefixes[0] != moved[0] {
			t.Errorf("after site update: version %d (was %d), request %q, peers %+v", m.Version, v0, m.RequestID, m.Peers)
		}
		if nm(other).Version != vOther {
			t.Errorf("a change in acme bumped globex's netmap")
		}

		// Endpoint update.
		eps := []netip.AddrPort{netip.MustParseAddrPort("203.0.113.9:51820")}
		must[*state.ApplianceInfo](t)(s.UpdateAppliance(ctx, operator, "acme", "home-1", state.ApplianceUpdate{Endpoints: &eps}))
		if got := nm(hq).Peers[0].Endpoints; len(got) != 1 || got[0] != eps[0] {
			t.Errorf("endpoints not pushed: %v", got)
		}

		// A sync waiting on hq is woken by the revocation of home-1, and
		// home-1's own sync is refused.
		dHQ := must[*state.Device](t)(s.AuthenticateDevice(ctx, hq.Credential))
		dHome := must[*state.Device](t)(s.AuthenticateDevice(ctx, home.Credential))
		cur := nm(hq).Version
		type res struct {
			nm  *netmap.Netmap
			err error
		}
		hqc, homec := make(chan res, 1), make(chan res, 1)
		go func() { m, err := s.Sync(ctx, dHQ, cur); hqc <- res{m, err} }()
		go func() { m, err := s.Sync(ctx, dHome, nm(home).Version); homec <- res{m, err} }()
		waitFor(t, func() bool { return s.Hub().Connected() == 2 })
		start := time.Now()
		must[*state.ApplianceInfo](t)(s.RevokeAppliance(ctx, operator, "acme", "home-1"))
		r := <-hqc
		if r.err != nil || len(r.nm.Peers) != 0 || r.nm.Version <= cur {
			t.Fatalf("hq after revoke: %+v, %v", r.nm, r.err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("revocation took %s to reach the peer", d)
		}
		wantCode(t, (<-homec).err, state.CodeUnauthenticated, "no longer active")
		_, err := s.AuthenticateDevice(ctx, home.Credential)
		wantCode(t, err, state.CodeUnauthenticated, "revoked")
		_, err = s.ApplianceNetmap(ctx, operator, "acme", "home-1")
		wantCode(t, err, state.CodeNotFound, "no netmap")

		// Deleting a tenant drops its appliances.
		if err := s.DeleteTenant(ctx, operator, "globex"); err != nil {
			t.Fatal(err)
		}
		_, err = s.AuthenticateDevice(ctx, other.Credential)
		wantCode(t, err, state.CodeUnauthenticated, "unknown device credential")
	})
}

func TestIsolation(t *testing.T) {
	t.Parallel()
	s := newState(t, storetest.SQLiteDSN(t), nil)
	a := must[*store.Tenant](t)(s.CreateTenant(ctx, operator, "acme"))
	b := must[*store.Tenant](t)(s.CreateTenant(ctx, operator, "globex"))
	must[*store.Site](t)(s.CreateSite(ctx, operator, "globex", state.SiteInput{Name: "hq", Kind: store.SiteOffice}))
	admin := &state.Principal{TokenID: "at_a", Scope: store.ScopeTenantAdmin, TenantID: a.ID}
	for _, ref := range []string{b.ID, b.Name} {
		_, err := s.GetSite(ctx, admin, ref, "hq")
		wantCode(t, err, state.CodeNotFound, "tenant")
		_, err = s.CreateSite(ctx, admin, ref, state.SiteInput{Name: "x", Kind: store.SiteHome})
		wantCode(t, err, state.CodeNotFound, "tenant")
	}
	ts := must[[]*store.Tenant](t)(s.ListTenants(ctx, admin))
	if len(ts) != 1 || ts[0].ID != a.ID {
		t.Errorf("tenant admin lists %v", ts)
	}
	_, err := s.CreateTenant(ctx, admin, "mine")
	wantCode(t, err, state.CodeForbidden, "operator")
	_, _, err = s.CreateAPIToken(ctx, admin, "", state.APITokenInput{})
	wantCode(t, err, state.CodeForbidden, "operator")
}

func TestAPITokens(t *testing.T) {
	t.Parallel()
	storetest.Engines(t, func(t *testing.T, dsn string) {
		t.Parallel()
		c := &clock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
		s := newState(t, dsn, c)
		secret := must[string](t)(s.Bootstrap(ctx))
		if secret == "" {
			t.Fatal("Bootstrap on an empty store made no token")
		}
		if again := must[string](t)(s.Bootstrap(ctx)); again != "" {
			t.Fatal("Bootstrap made a second token")
		}
		op := must[*state.Principal](t)(s.AuthenticateAPIToken(ctx, secret))
		if !op.IsOperator() {
			t.Fatalf("bootstrap token is %+v", op)
		}
		must[*store.Tenant](t)(s.CreateTenant(ctx, op, "acme"))
		at, tsecret, err := s.CreateAPIToken(ctx, op, "acme", state.APITokenInput{Description: "ci", TTL: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		p := must[*state.Principal](t)(s.AuthenticateAPIToken(ctx, tsecret))
		if p.Scope != store.ScopeTenantAdmin || p.TenantID != at.TenantID {
			t.Fatalf("tenant token is %+v", p)
		}
		c.Add(2 * time.Hour)
		_, err = s.AuthenticateAPIToken(ctx, tsecret)
		wantCode(t, err, state.CodeUnauthenticated, "expired")
		_, err = s.AuthenticateAPIToken(ctx, "cwa_nope")
		wantCode(t, err, state.CodeUnauthenticated, "unknown API token")
		if err := s.DeleteAPIToken(ctx, op, "acme", at.ID); err != nil {
			t.Fatal(err)
		}
		ops := must[[]*store.APIToken](t)(s.ListAPITokens(ctx, op, ""))
		if len(ops) != 1 {
			t.Errorf("%d operator tokens", len(ops))
		}
	})
}

// TestReplicas runs two States on one database: a change made through one
// reaches a sync waiting on the other within a second.
func TestReplicas(t *testing.T) {
	t.Parallel()
	storetest.Engines(t, func(t *testing.T, dsn string) {
		t.Parallel()
		r1 := newState(t, dsn, nil)
		r2 := newState(t, dsn, nil)
		must[*store.Tenant](t)(r1.CreateTenant(ctx, operator, "acme"))
		must[*store.Site](t)(r1.CreateSite(ctx, operator, "acme", state.SiteInput{Name: "hq", Kind: store.SiteOffice, LANPrefixes: pfx("10.1.0.0/24")}))
		must[*store.Site](t)(r1.CreateSite(ctx, operator, "acme", state.SiteInput{Name: "br", Kind: store.SiteOffice, LANPrefixes: pfx("10.2.0.0/24")}))
		a := enroll(t, r1, "acme", "hq", "hq-1")
		// The appliance enrolled through r1 syncs through r2 at once.
		d := must[*state.Device](t)(r2.AuthenticateDevice(ctx, a.Credential))
		first := must[*netmap.Netmap](t)(r2.Sync(ctx, d, 0))
		if first.Version != a.Netmap.Version || !first.SameContent(a.Netmap) {
			t.Fatalf("replicas disagree: r1 %+v, r2 %+v", a.Netmap, first)
		}

		for i, change := range []func(){
			func() { enroll(t, r1, "acme", "br", "br-1") },
			func() {
				p := pfx("10.2.8.0/24")
				must[*store.Site](t)(r1.UpdateSite(state.WithRequestID(ctx, "req-r1"), operator, "acme", "br", state.SiteUpdate{LANPrefixes: &p}))
			},
			func() { must[*state.ApplianceInfo](t)(r1.RevokeAppliance(ctx, operator, "acme", "br-1")) },
		} {
			cur := r2.Hub().Current(d.ApplianceID).Version
			got := make(chan *netmap.Netmap, 1)
			go func() {
				wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				defer cancel()
				m, err := r2.Sync(wctx, d, cur)
				if err != nil {
					t.Error(err)
				}
				got <- m
			}()
			waitFor(t, func() bool { return r2.Hub().IsConnected(d.ApplianceID) })
			start := time.Now()
			change()
			m := <-got
			if lag := time.Since(start); lag > time.Second {
				t.Errorf("change %d took %s to reach the other replica", i, lag)
			}
			if m == nil {
				t.FailNow()
			}
			switch i {
			case 0:
				if len(m.Peers) != 1 || m.Peers[0].Name != "br-1" {
					t.Errorf("after enroll: %+v", m.Peers)
				}
			case 1:
				if m.RequestID != "req-r1" || m.Peers[0].Prefixes[0] != netip.MustParsePrefix("10.2.8.0/24") {
					t.Errorf("after site update: %+v", m)
				}
			case 2:
				if len(m.Peers) != 0 {
					t.Errorf("after revoke: %+v", m.Peers)
				}
			}
			if m1 := r1.Hub().Current(d.ApplianceID); m1.Version != m.Version || !m1.SameContent(m) {
				t.Errorf("change %d: replicas disagree: %d vs %d", i, m1.Version, m.Version)
			}
		}

		// A third replica started now compiles the same content.
		r3 := newState(t, dsn, nil)
		if m3, m1 := r3.Hub().Current(d.ApplianceID), r1.Hub().Current(d.ApplianceID); !m3.SameContent(m1) || m3.Version < m1.Version {
			t.Errorf("fresh replica: %+v vs %+v", m3, m1)
		}
	})
}

func TestCloseWakesSyncs(t *testing.T) {
	t.Parallel()
	s := newState(t, storetest.SQLiteDSN(t), nil)
	must[*store.Tenant](t)(s.CreateTenant(ctx, operator, "acme"))
	must[*store.Site](t)(s.CreateSite(ctx, operator, "acme", state.SiteInput{Name: "hq", Kind: store.SiteOffice}))
	e := enroll(t, s, "acme", "hq", "")
	d := must[*state.Device](t)(s.AuthenticateDevice(ctx, e.Credential))
	errc := make(chan error)
	go func() { _, err := s.Sync(ctx, d, e.Netmap.Version); errc <- err }()
	waitFor(t, func() bool { return s.Hub().Connected() == 1 })
	s.Close()
	if err := <-errc; !errors.Is(err, push.ErrClosed) {
		t.Fatalf("Sync after Close: %v", err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestSyncFromTheFuture: an appliance holding a version beyond the change
// feed (the database was restored from a backup) gets the current netmap
// instead of waiting for a version that will never come.
func TestSyncFromTheFuture(t *testing.T) {
	t.Parallel()
	s := newState(t, storetest.SQLiteDSN(t), nil)
	must[*store.Tenant](t)(s.CreateTenant(ctx, operator, "acme"))
	must[*store.Site](t)(s.CreateSite(ctx, operator, "acme", state.SiteInput{Name: "hq", Kind: store.SiteOffice}))
	e := enroll(t, s, "acme", "hq", "")
	d := must[*state.Device](t)(s.AuthenticateDevice(ctx, e.Credential))
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	m, err := s.Sync(wctx, d, e.Netmap.Version+1000)
	if err != nil || m.Version != e.Netmap.Version {
		t.Fatalf("Sync from the future = %+v, %v", m, err)
	}
}
