package api

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/causeway-net/causeway/controller/netmap"
	"github.com/causeway-net/causeway/controller/state"
)

// routes is the routing table; docs/api/openapi.json documents every entry
// (a test checks that).
func (a *API) routes() []route {
	return []route{
		{pattern: "GET /healthz", raw: a.healthz},
		{pattern: "GET /readyz", raw: a.readyz},
		{pattern: "GET /metrics", raw: a.serveMetrics},
		{pattern: "GET /api/v1/openapi.json", raw: serveOpenAPI},

		{pattern: "GET /api/v1/tenants", auth: authAdmin, handle: a.listTenants},
		{pattern: "POST /api/v1/tenants", auth: authAdmin, handle: a.createTenant},
		{pattern: "GET /api/v1/tenants/{tenant}", auth: authAdmin, handle: a.getTenant},
		{pattern: "PATCH /api/v1/tenants/{tenant}", auth: authAdmin, handle: a.updateTenant},
		{pattern: "DELETE /api/v1/tenants/{tenant}", auth: authAdmin, handle: a.deleteTenant},

		{pattern: "GET /api/v1/tenants/{tenant}/sla", auth: authAdmin, handle: a.getSLA},
		{pattern: "PUT /api/v1/tenants/{tenant}/sla", auth: authAdmin, handle: a.putSLA},
		{pattern: "GET /api/v1/tenants/{tenant}/sla-overrides", auth: authAdmin, handle: a.listSLAOverrides},
		{pattern: "PUT /api/v1/tenants/{tenant}/sla-overrides/{siteA}/{siteB}", auth: authAdmin, handle: a.putSLAOverride},
		{pattern: "DELETE /api/v1/tenants/{tenant}/sla-overrides/{siteA}/{siteB}", auth: authAdmin, handle: a.deleteSLAOverride},
		{pattern: "GET /api/v1/tenants/{tenant}/probe-key", auth: authAdmin, handle: a.getProbeKeys},
		{pattern: "POST /api/v1/tenants/{tenant}/probe-key/rotate", auth: authAdmin, handle: a.rotateProbeKey},

		{pattern: "GET /api/v1/tenants/{tenant}/sites", auth: authAdmin, handle: a.listSites},
		{pattern: "POST /api/v1/tenants/{tenant}/sites", auth: authAdmin, handle: a.createSite},
		{pattern: "GET /api/v1/tenants/{tenant}/sites/{site}", auth: authAdmin, handle: a.getSite},
		{pattern: "PATCH /api/v1/tenants/{tenant}/sites/{site}", auth: authAdmin, handle: a.updateSite},
		{pattern: "DELETE /api/v1/tenants/{tenant}/sites/{site}", auth: authAdmin, handle: a.deleteSite},
		{pattern: "GET /api/v1/tenants/{tenant}/sites/{site}/pair", auth: authAdmin, handle: a.pairStatus},

		{pattern: "GET /api/v1/tenants/{tenant}/enrollment-tokens", auth: authAdmin, handle: a.listEnrollmentTokens},
		{pattern: "POST /api/v1/tenants/{tenant}/enrollment-tokens", auth: authAdmin, handle: a.createEnrollmentToken},
		{pattern: "GET /api/v1/tenants/{tenant}/enrollment-tokens/{token}", auth: authAdmin, handle: a.getEnrollmentToken},
		{pattern: "DELETE /api/v1/tenants/{tenant}/enrollment-tokens/{token}", auth: authAdmin, handle: a.deleteEnrollmentToken},

		{pattern: "GET /api/v1/tenants/{tenant}/appliances", auth: authAdmin, handle: a.listAppliances},
		{pattern: "GET /api/v1/tenants/{tenant}/appliances/{appliance}", auth: authAdmin, handle: a.getAppliance},
		{pattern: "PATCH /api/v1/tenants/{tenant}/appliances/{appliance}", auth: authAdmin, handle: a.updateAppliance},
		{pattern: "POST /api/v1/tenants/{tenant}/appliances/{appliance}/revoke", auth: authAdmin, handle: a.revokeAppliance},
		{pattern: "POST /api/v1/tenants/{tenant}/appliances/{appliance}/drain", auth: authAdmin, handle: a.drainAppliance},
		{pattern: "POST /api/v1/tenants/{tenant}/appliances/{appliance}/undrain", auth: authAdmin, handle: a.undrainAppliance},
		{pattern: "GET /api/v1/tenants/{tenant}/appliances/{appliance}/netmap", auth: authAdmin, handle: a.getNetmap},

		{pattern: "GET /api/v1/tenants/{tenant}/paths", auth: authAdmin, handle: a.pathHistory},

		{pattern: "GET /api/v1/tenants/{tenant}/api-tokens", auth: authAdmin, handle: a.listAPITokens},
		{pattern: "POST /api/v1/tenants/{tenant}/api-tokens", auth: authAdmin, handle: a.createAPIToken},
		{pattern: "DELETE /api/v1/tenants/{tenant}/api-tokens/{apitoken}", auth: authAdmin, handle: a.deleteAPIToken},
		{pattern: "GET /api/v1/api-tokens", auth: authAdmin, handle: a.listAPITokens},
		{pattern: "POST /api/v1/api-tokens", auth: authAdmin, handle: a.createAPIToken},
		{pattern: "DELETE /api/v1/api-tokens/{apitoken}", auth: authAdmin, handle: a.deleteAPIToken},

		{pattern: "POST /api/v1/enroll", handle: a.enroll},
		{pattern: "GET /api/v1/sync", auth: authDevice, raw: a.sync},
		{pattern: "POST /api/v1/paths/report", auth: authDevice, handle: a.reportPaths},
		{pattern: "POST /api/v1/pair/report", auth: authDevice, handle: a.reportPair},
		{pattern: "POST /api/v1/usage/report", auth: authDeviceAny, handle: a.reportUsage},

		{pattern: "GET /api/v1/usage", auth: authAdmin, handle: a.usage},
		{pattern: "GET /api/v1/metering/status", auth: authAdmin, handle: a.meteringStatus},
		{pattern: "GET /api/v1/metering/dead-letters", auth: authAdmin, handle: a.deadLetters},
		{pattern: "POST /api/v1/metering/dead-letters/retry", auth: authAdmin, handle: a.retryDeadLetters},
	}
}

func (a *API) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok", "version": a.version})
}

func (a *API) readyz(w http.ResponseWriter, r *http.Request) {
	if a.draining.Load() {
		writeProblem(w, r, newProblem(codeUnavailable, "shutting down"))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := a.state.Ping(ctx); err != nil {
		a.log.Warn("readiness check failed", "err", err)
		writeProblem(w, r, newProblem(codeUnavailable, "the database is not reachable"))
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

func (a *API) serveMetrics(w http.ResponseWriter, r *http.Request) {
	if a.metrics == nil {
		writeProblem(w, r, newProblem(codeNoRoute, "metrics are disabled"))
		return
	}
	a.metrics.handler().ServeHTTP(w, r)
}

func (a *API) body(c *call) ([]byte, error) { return readBody(c.r, a.maxBody) }

// decodeBody reads the request body within the size limit and decodes it
// with decode, the route's strict decoder.
func decodeBody[T any](a *API, c *call, decode func([]byte) (T, error)) (T, error) {
	data, err := a.body(c)
	if err != nil {
		var zero T
		return zero, err
	}
	return decode(data)
}

// Tenants.

func (a *API) listTenants(c *call) (any, error) {
	ts, err := a.state.ListTenants(c.r.Context(), c.p)
	return listOf(ts, viewTenant), err
}

func (a *API) createTenant(c *call) (any, error) {
	// Scope before shape: a tenant-admin hears "forbidden" whatever it sent.
	// (State checks again.)
	if !c.p.IsOperator() {
		return nil, &state.Error{Code: state.CodeForbidden, Msg: "this needs an operator token"}
	}
	name, err := decodeBody(a, c, decodeCreateTenant)
	if err != nil {
		return nil, err
	}
	t, err := a.state.CreateTenant(c.r.Context(), c.p, name)
	if err != nil {
		return nil, err
	}
	c.status = http.StatusCreated
	return viewTenant(t), nil
}

func (a *API) getTenant(c *call) (any, error) {
	t, err := a.state.GetTenant(c.r.Context(), c.p, c.path("tenant"))
	if err != nil {
		return nil, err
	}
	return viewTenant(t), nil
}

func (a *API) deleteTenant(c *call) (any, error) {
	return nil, a.state.DeleteTenant(c.r.Context(), c.p, c.path("tenant"))
}

// SLAs and probe keys.

func (a *API) getSLA(c *call) (any, error) {
	sla, err := a.state.GetSLA(c.r.Context(), c.p, c.path("tenant"))
	if err != nil {
		return nil, err
	}
	return viewSLA(sla), nil
}

func (a *API) putSLA(c *call) (any, error) {
	in, err := decodeBody(a, c, decodeSLA)
	if err != nil {
		return nil, err
	}
	sla, err := a.state.SetSLA(c.r.Context(), c.p, c.path("tenant"), in)
	if err != nil {
		return nil, err
	}
	return viewSLA(sla), nil
}

func (a *API) listSLAOverrides(c *call) (any, error) {
	os, err := a.state.ListSLAOverrides(c.r.Context(), c.p, c.path("tenant"))
	if err != nil {
		return nil, err
	}
	return listOf(os, viewSLAOverride), nil
}

func (a *API) putSLAOverride(c *call) (any, error) {
	in, err := decodeBody(a, c, decodeSLA)
	if err != nil {
		return nil, err
	}
	o, err := a.state.PutSLAOverride(c.r.Context(), c.p, c.path("tenant"), c.path("siteA"), c.path("siteB"), in)
	if err != nil {
		return nil, err
	}
	return viewSLAOverride(o), nil
}

func (a *API) deleteSLAOverride(c *call) (any, error) {
	return nil, a.state.DeleteSLAOverride(c.r.Context(), c.p, c.path("tenant"), c.path("siteA"), c.path("siteB"))
}

func (a *API) getProbeKeys(c *call) (any, error) {
	ks, err := a.state.ProbeKeys(c.r.Context(), c.p, c.path("tenant"))
	if err != nil {
		return nil, err
	}
	return viewProbeKeys(ks), nil
}

func (a *API) rotateProbeKey(c *call) (any, error) {
	ks, err := a.state.RotateProbeKey(c.r.Context(), c.p, c.path("tenant"))
	if err != nil {
		return nil, err
	}
	return viewProbeKeys(ks), nil
}

// Sites.

func (a *API) listSites(c *call) (any, error) {
	ss, err := a.state.ListSites(c.r.Context(), c.p, c.path("tenant"))
	if err != nil {
		return nil, err
	}
	return listOf(ss, viewSite), nil
}

func (a *API) createSite(c *call) (any, error) {
	in, err := decodeBody(a, c, decodeCreateSite)
	if err != nil {
		return nil, err
	}
	s, err := a.state.CreateSite(c.r.Context(), c.p, c.path("tenant"), in)
	if err != nil {
		return nil, err
	}
	c.status = http.StatusCreated
	return viewSite(s), nil
}

func (a *API) getSite(c *call) (any, error) {
	s, err := a.state.GetSite(c.r.Context(), c.p, c.path("tenant"), c.path("site"))
	if err != nil {
		return nil, err
	}
	return viewSite(s), nil
}

func (a *API) updateSite(c *call) (any, error) {
	up, err := decodeBody(a, c, decodeUpdateSite)
	if err != nil {
		return nil, err
	}
	s, err := a.state.UpdateSite(c.r.Context(), c.p, c.path("tenant"), c.path("site"), up)
	if err != nil {
		return nil, err
	}
	return viewSite(s), nil
}

func (a *API) deleteSite(c *call) (any, error) {
	return nil, a.state.DeleteSite(c.r.Context(), c.p, c.path("tenant"), c.path("site"))
}

// Enrollment tokens.

func (a *API) listEnrollmentTokens(c *call) (any, error) {
	ts, err := a.state.ListEnrollmentTokens(c.r.Context(), c.p, c.path("tenant"))
	if err != nil {
		return nil, err
	}
	return listOf(ts, viewEnrollmentToken), nil
}

func (a *API) createEnrollmentToken(c *call) (any, error) {
	in, err := decodeBody(a, c, decodeCreateEnrollmentToken)
	if err != nil {
		return nil, err
	}
	et, secret, err := a.state.CreateEnrollmentToken(c.r.Context(), c.p, c.path("tenant"), in)
	if err != nil {
		return nil, err
	}
	v := viewEnrollmentToken(et)
	v.Token = secret
	c.status = http.StatusCreated
	return v, nil
}

func (a *API) getEnrollmentToken(c *call) (any, error) {
	et, err := a.state.GetEnrollmentToken(c.r.Context(), c.p, c.path("tenant"), c.path("token"))
	if err != nil {
		return nil, err
	}
	return viewEnrollmentToken(et), nil
}

func (a *API) deleteEnrollmentToken(c *call) (any, error) {
	return nil, a.state.DeleteEnrollmentToken(c.r.Context(), c.p, c.path("tenant"), c.path("token"))
}

// Appliances.

func (a *API) listAppliances(c *call) (any, error) {
	as, err := a.state.ListAppliances(c.r.Context(), c.p, c.path("tenant"))
	if err != nil {
		return nil, err
	}
	return listOf(as, viewAppliance), nil
}

func (a *API) getAppliance(c *call) (any, error) {
	ap, err := a.state.GetAppliance(c.r.Context(), c.p, c.path("tenant"), c.path("appliance"))
	if err != nil {
		return nil, err
	}
	return viewAppliance(ap), nil
}

func (a *API) updateAppliance(c *call) (any, error) {
	up, err := decodeBody(a, c, decodeUpdateAppliance)
	if err != nil {
		return nil, err
	}
	ap, err := a.state.UpdateAppliance(c.r.Context(), c.p, c.path("tenant"), c.path("appliance"), up)
	if err != nil {
		return nil, err
	}
	return viewAppliance(ap), nil
}

func (a *API) revokeAppliance(c *call) (any, error) {
	ap, err := a.state.RevokeAppliance(c.r.Context(), c.p, c.path("tenant"), c.path("appliance"))
	if err != nil {
		return nil, err
	}
	return viewAppliance(ap), nil
}

func (a *API) getNetmap(c *call) (any, error) {
	return a.state.ApplianceNetmap(c.r.Context(), c.p, c.path("tenant"), c.path("appliance"))
}

// API tokens. The tenant-less routes manage operator tokens.

func (a *API) listAPITokens(c *call) (any, error) {
	ts, err := a.state.ListAPITokens(c.r.Context(), c.p, c.path("tenant"))
	if err != nil {
		return nil, err
	}
	return listOf(ts, viewAPIToken), nil
}

func (a *API) createAPIToken(c *call) (any, error) {
	in, err := decodeBody(a, c, decodeCreateAPIToken)
	if err != nil {
		return nil, err
	}
	at, secret, err := a.state.CreateAPIToken(c.r.Context(), c.p, c.path("tenant"), in)
	if err != nil {
		return nil, err
	}
	v := viewAPIToken(at)
	v.Token = secret
	c.status = http.StatusCreated
	return v, nil
}

func (a *API) deleteAPIToken(c *call) (any, error) {
	return nil, a.state.DeleteAPIToken(c.r.Context(), c.p, c.path("tenant"), c.path("apitoken"))
}

// Appliance side.

type enrollResponse struct {
	Appliance  applianceView  `json:"appliance"`
	Credential string         `json:"credential"`
	Netmap     *netmap.Netmap `json:"netmap"`
}

func (a *API) enroll(c *call) (any, error) {
	if err := a.rateLimited(c.r); err != nil {
		return nil, err
	}
	data, err := a.body(c)
	if err != nil {
		return nil, err
	}
	in, err := decodeEnroll(data)
	if err != nil {
		if in.Token == "" {
			a.limiter.fail(clientOf(c.r))
		}
		return nil, err
	}
	e, err := a.state.Enroll(c.r.Context(), in)
	if err != nil {
		a.authFailed(c.r, err)
		return nil, err
	}
	c.status = http.StatusCreated
	return enrollResponse{Appliance: viewAppliance(&state.ApplianceInfo{Appliance: e.Appliance}), Credential: e.Credential, Netmap: e.Netmap}, nil
}

// NetmapVersionHeader carries the version of the netmap in a sync response.
const NetmapVersionHeader = "Causeway-Netmap-Version"

// NetmapBaseHeader, present in a sync response, says that the body is a
// netmap.Delta against the version it names rather than a full netmap.
const NetmapBaseHeader = "Causeway-Netmap-Base"

// sync is the appliance's long-poll: it answers with the netmap as soon as
// its version is above ?since=, or 204 after ?wait= (default 30s). With
// ?delta=1 it may answer with a netmap.Delta against since instead (header
// NetmapBaseHeader). The netmap is streamed from the shared encoded peers,
// never built in memory whole.
func (a *API) sync(w http.ResponseWriter, r *http.Request) {
	c := callFrom(r)
	q := r.URL.Query()
	var f fieldErrs
	var since uint64
	if s := q.Get("since"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			f.add("since", "want the version the appliance holds (a whole number), got %q", s)
		}
		since = v
	}
	wait := DefaultSyncWait
	if s := q.Get("wait"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 || d > MaxSyncWait {
			f.add("wait", "want a duration from 0s to %s, got %q", MaxSyncWait, s)
		}
		wait = d
	}
	var delta bool
	if s := q.Get("delta"); s != "" {
		v, err := strconv.ParseBool(s)
		if err != nil {
			f.add("delta", "want 1 (a delta against since is welcome) or 0, got %q", s)
		}
		delta = v
	}
	if err := f.err(); err != nil {
		a.fail(w, r, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	u, err := a.state.SyncUpdate(ctx, c.dev, since, delta)
	switch {
	case errors.Is(err, context.DeadlineExceeded) && r.Context().Err() == nil:
		w.Header().Set(NetmapVersionHeader, strconv.FormatUint(since, 10))
		w.WriteHeader(http.StatusNoContent)
	case r.Context().Err() != nil:
		// The appliance went away; nobody to answer.
	case err != nil:
		a.fail(w, r, err)
	case u.Delta != nil:
		body := append(u.Delta.AppendJSON(nil), '\n')
		h := w.Header()
		h.Set(NetmapVersionHeader, strconv.FormatUint(u.Delta.Version, 10))
		h.Set(NetmapBaseHeader, strconv.FormatUint(u.Delta.Base, 10))
		h.Set("Content-Type", "application/json")
		h.Set("Cache-Control", "no-store")
		h.Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(http.StatusOK)
		w.Write(body)
	default:
		h := w.Header()
		h.Set(NetmapVersionHeader, strconv.FormatUint(u.Netmap.Version, 10))
		h.Set("Content-Type", "application/json")
		h.Set("Cache-Control", "no-store")
		h.Set("Content-Length", strconv.Itoa(u.Netmap.EncodedLen()))
		w.WriteHeader(http.StatusOK)
		// A write error means the appliance went away; it will ask again.
		u.Netmap.WriteJSON(w)
	}
}
