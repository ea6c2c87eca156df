package api

import (
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/netip"
	"time"

	"github.com/causeway-net/causeway/controller/netmap"
	"github.com/causeway-net/causeway/controller/state"
	"github.com/causeway-net/causeway/controller/store"
	"github.com/causeway-net/causeway/dataplane/wgkey"
)

// The request bodies. Every field is a plain JSON type so that each problem
// can name its field; parse turns them into the state package's inputs.

type createTenantRequest struct {
	Name string `json:"name"`
}

type createSiteRequest struct {
	Name        string   `json:"name"`
	Kind        string   `json:"kind"`
	LANPrefixes []string `json:"lan_prefixes"`
}

type updateSiteRequest struct {
	Name        *string   `json:"name"`
	Kind        *string   `json:"kind"`
	LANPrefixes *[]string `json:"lan_prefixes"`
}

type createEnrollmentTokenRequest struct {
	Site        string `json:"site"`
	TTL         string `json:"ttl"`
	Description string `json:"description"`
}

type enrollRequest struct {
	Token     string   `json:"token"`
	Tenant    string   `json:"tenant"`
	Site      string   `json:"site"`
	Name      string   `json:"name"`
	PublicKey string   `json:"public_key"`
	Endpoints []string `json:"endpoints"`
}

type updateApplianceRequest struct {
	Endpoints *[]string `json:"endpoints"`
	Priority  *int      `json:"priority"`
}

// slaRequest is the body of PUT …/sla and PUT …/sla-overrides/…: every
// field is required, so that a PUT says the whole SLA.
type slaRequest struct {
	MaxLossPercent  *float64 `json:"max_loss_percent"`
	MaxRTTMillis    *int64   `json:"max_rtt_ms"`
	MaxJitterMillis *int64   `json:"max_jitter_ms"`
}

type createAPITokenRequest struct {
	Description string `json:"description"`
	TTL         string `json:"ttl"`
}

// readBody reads a JSON body of at most limit bytes. An empty body reads as
// an empty object.
func readBody(r *http.Request, limit int64) ([]byte, error) {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || (mt != "application/json" && mt != "application/merge-patch+json") {
			return nil, newProblem(codeMediaType, fmt.Sprintf("send application/json, not %q", ct))
		}
	}
	data, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, limit))
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return nil, newProblem(codeTooLarge, fmt.Sprintf("the body may be at most %d bytes", limit))
	}
	if err != nil {
		return nil, newProblem(codeBadRequest, "reading the body: "+err.Error())
	}
	if len(data) == 0 {
		return []byte("{}"), nil
	}
	return data, nil
}

// decodeJSON is the strict decoder every request body goes through.
func decodeJSON(data []byte, v any) error {
	return decodeJSONAt(data, v, "")
}

// decodeJSONAt is decodeJSON for a value at path prefix of the body, so
// that its errors name their field in full.
func decodeJSONAt(data []byte, v any, prefix string) error {
	if err := netmap.DecodeStrict(data, v, prefix); err != nil {
		p := newProblem(codeBadRequest, err.Error())
		var fe *netmap.FieldError
		if errors.As(err, &fe) {
			p.Errors = []state.FieldError{{Field: fe.Field, Msg: fe.Msg}}
		}
		return p
	}
	return nil
}

type fieldErrs []state.FieldError

func (f *fieldErrs) add(field, format string, args ...any) {
	*f = append(*f, state.FieldError{Field: field, Msg: fmt.Sprintf(format, args...)})
}

func (f fieldErrs) err() error {
	if len(f) == 0 {
		return nil
	}
	return &state.Error{Code: state.CodeInvalid, Msg: "invalid input", Fields: f}
}

func parsePrefixes(f *fieldErrs, field string, ss []string) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ss))
	for i, s := range ss {
		p, err := netmap.ParseLANPrefix(s)
		if err != nil {
			f.add(fmt.Sprintf("%s[%d]", field, i), "%v", err)
			continue
		}
		out = append(out, p)
	}
	return out
}

func parseEndpoints(f *fieldErrs, field string, ss []string) []netip.AddrPort {
	out := make([]netip.AddrPort, 0, len(ss))
	for i, s := range ss {
		ap, err := netmap.ParseEndpoint(s)
		if err != nil {
			f.add(fmt.Sprintf("%s[%d]", field, i), "%v", err)
			continue
		}
		out = append(out, ap)
	}
	return out
}

func parseTTL(f *fieldErrs, field, s string) time.Duration {
	if s == "" {
		return 0
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		f.add(field, "want a duration such as \"1h\" or \"30m\", got %q", s)
		return 0
	}
	return d
}

func decodeCreateSite(data []byte) (state.SiteInput, error) {
	var req createSiteRequest
	if err := decodeJSON(data, &req); err != nil {
		return state.SiteInput{}, err
	}
	var f fieldErrs
	in := state.SiteInput{Name: req.Name, Kind: store.SiteKind(req.Kind), LANPrefixes: parsePrefixes(&f, "lan_prefixes", req.LANPrefixes)}
	if req.Name == "" {
		f.add("name", "required")
	}
	if req.Kind == "" {
		f.add("kind", "required (one of %v)", store.SiteKinds)
	}
	return in, f.err()
}

func decodeUpdateSite(data []byte) (state.SiteUpdate, error) {
	var req updateSiteRequest
	if err := decodeJSON(data, &req); err != nil {
		return state.SiteUpdate{}, err
	}
	var f fieldErrs
	up := state.SiteUpdate{Name: req.Name}
	if req.Kind != nil {
		k := store.SiteKind(*req.Kind)
		up.Kind = &k
	}
	if req.LANPrefixes != nil {
		ps := parsePrefixes(&f, "lan_prefixes", *req.LANPrefixes)
		up.LANPrefixes = &ps
	}
	return up, f.err()
}

func decodeCreateEnrollmentToken(data []byte) (state.EnrollmentTokenInput, error) {
	var req createEnrollmentTokenRequest
	if err := decodeJSON(data, &req); err != nil {
		return state.EnrollmentTokenInput{}, err
	}
	var f fieldErrs
	in := state.EnrollmentTokenInput{Site: req.Site, Description: req.Description, TTL: parseTTL(&f, "ttl", req.TTL)}
	return in, f.err()
}

func decodeEnroll(data []byte) (state.EnrollInput, error) {
	var req enrollRequest
	if err := decodeJSON(data, &req); err != nil {
		return state.EnrollInput{}, err
	}
	var f fieldErrs
	in := state.EnrollInput{Token: req.Token, Tenant: req.Tenant, Site: req.Site, Name: req.Name,
		Endpoints: parseEndpoints(&f, "endpoints", req.Endpoints)}
	if req.Token == "" {
		f.add("token", "required (the enrollment token)")
	}
	if req.PublicKey == "" {
		f.add("public_key", "required (the WireGuard public key generated on the appliance)")
	} else if k, err := wgkey.ParsePublic(req.PublicKey); err != nil {
		f.add("public_key", "%v", err)
	} else {
		in.PublicKey = k
	}
	return in, f.err()
}

func decodeUpdateAppliance(data []byte) (state.ApplianceUpdate, error) {
	var req updateApplianceRequest
	if err := decodeJSON(data, &req); err != nil {
		return state.ApplianceUpdate{}, err
	}
	var f fieldErrs
	up := state.ApplianceUpdate{Priority: req.Priority}
	if req.Endpoints != nil {
		eps := parseEndpoints(&f, "endpoints", *req.Endpoints)
		up.Endpoints = &eps
	}
	return up, f.err()
}

func decodeCreateTenant(data []byte) (string, error) {
	var req createTenantRequest
	if err := decodeJSON(data, &req); err != nil {
		return "", err
	}
	var f fieldErrs
	if req.Name == "" {
		f.add("name", "required")
	}
	return req.Name, f.err()
}

// decodeSLA checks that every threshold is there; state checks the
// ranges.
func decodeSLA(data []byte) (store.SLA, error) {
	var req slaRequest
	if err := decodeJSON(data, &req); err != nil {
		return store.SLA{}, err
	}
	var f fieldErrs
	var sla store.SLA
	if req.MaxLossPercent == nil {
		f.add("max_loss_percent", "required (a percentage, 0 for no limit)")
	} else {
		sla.MaxLossPercent = *req.MaxLossPercent
	}
	if req.MaxRTTMillis == nil {
		f.add("max_rtt_ms", "required (milliseconds of mean round-trip time, 0 for no limit)")
	} else {
		sla.MaxRTTMillis = *req.MaxRTTMillis
	}
	if req.MaxJitterMillis == nil {
		f.add("max_jitter_ms", "required (milliseconds of jitter, 0 for no limit)")
	} else {
		sla.MaxJitterMillis = *req.MaxJitterMillis
	}
	return sla, f.err()
}

func decodeCreateAPIToken(data []byte) (state.APITokenInput, error) {
	var req createAPITokenRequest
	if err := decodeJSON(data, &req); err != nil {
		return state.APITokenInput{}, err
	}
	var f fieldErrs
	in := state.APITokenInput{Description: req.Description, TTL: parseTTL(&f, "ttl", req.TTL)}
	return in, f.err()
}
