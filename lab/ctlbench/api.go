package ctlbench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/causeway-net/causeway/controller/netmap"
	"github.com/causeway-net/causeway/dataplane/wgkey"
)

// admin is a client of the controller's REST API with the operator token.
type admin struct {
	base  string
	token string
	http  *http.Client
}

func newAdmin(base, token string, conns int) *admin {
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConnsPerHost: conns,
		DisableCompression:  true,
	}
	return &admin{base: base, token: token, http: &http.Client{Transport: tr}}
}

// call sends body (JSON) and decodes the answer into out, which may be nil.
func (a *admin) call(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+a.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := a.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(b))
	}
	if out == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		return err
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decoding the answer: %w", method, path, err)
	}
	_, err = io.Copy(io.Discard, resp.Body)
	return err
}

func (a *admin) createTenant(ctx context.Context, name string) error {
	return a.call(ctx, http.MethodPost, "/api/v1/tenants", map[string]any{"name": name}, nil)
}

func (a *admin) createSite(ctx context.Context, tenant, name string, prefix netip.Prefix) error {
	return a.call(ctx, http.MethodPost, "/api/v1/tenants/"+tenant+"/sites",
		map[string]any{"name": name, "kind": "office", "lan_prefixes": []string{prefix.String()}}, nil)
}

func (a *admin) createToken(ctx context.Context, tenant, site string) (string, error) {
	var out struct {
		Token string `json:"token"`
	}
	err := a.call(ctx, http.MethodPost, "/api/v1/tenants/"+tenant+"/enrollment-tokens",
		map[string]any{"site": site, "ttl": "6h", "description": "bench control"}, &out)
	if err == nil && out.Token == "" {
		err = fmt.Errorf("creating an enrollment token: no token in the answer")
	}
	return out.Token, err
}

// enrolled is what the benchmark keeps of one enrollment.
type enrolled struct {
	id, name, credential string
	// version is the version of the netmap the enrollment answered with.
	version uint64
}

// enroll enrols one appliance the way an appliance does (POST
// /api/v1/enroll, no operator token). When decode is set the netmap in the
// answer is decoded and validated with netmap.Decode, as an appliance
// would; otherwise only its version is read.
func (a *admin) enroll(ctx context.Context, token, name string, key wgkey.PublicKey, ep netip.AddrPort, decode bool) (*enrolled, error) {
	b, _ := json.Marshal(map[string]any{"token": token, "name": name, "public_key": key.String(), "endpoints": []string{ep.String()}})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.base+"/api/v1/enroll", bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("enrolling %s: %w", name, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4*netmap.MaxSize))
	if err != nil {
		return nil, fmt.Errorf("enrolling %s: %w", name, err)
	}
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("enrolling %s: %s: %s", name, resp.Status, bytes.TrimSpace(body[:min(len(body), 4<<10)]))
	}
	var out struct {
		Appliance struct {
			ID   string `json:"id"`
			Name string `json:"name"`
		} `json:"appliance"`
		Credential string          `json:"credential"`
		Netmap     json.RawMessage `json:"netmap"`
	}
	if err := json.Unmarshal(body, &out); err != nil || out.Credential == "" {
		return nil, fmt.Errorf("enrolling %s: bad answer (%v)", name, err)
	}
	e := &enrolled{id: out.Appliance.ID, name: out.Appliance.Name, credential: out.Credential}
	switch {
	case len(out.Netmap) == 0 || string(out.Netmap) == "null":
		// The controller answers without a netmap when its follower did not
		// compile one within its wait; version stays 0.
	case decode:
		nm, err := netmap.Decode(out.Netmap)
		if err != nil {
			return nil, fmt.Errorf("enrolling %s: %w", name, err)
		}
		e.version = nm.Version
	default:
		var v struct {
			Version uint64 `json:"version"`
		}
		if err := json.Unmarshal(out.Netmap, &v); err != nil {
			return nil, fmt.Errorf("enrolling %s: netmap: %w", name, err)
		}
		e.version = v.Version
	}
	return e, nil
}

// metrics returns the controller's /metrics page.
func (a *admin) metrics(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.base+"/metrics", nil)
	if err != nil {
		return "", err
	}
	resp, err := a.http.Do(req)
	if err != nil {
		return "", fmt.Errorf("/metrics: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("/metrics: %s", resp.Status)
	}
	return string(b), err
}

// netmapVersion returns the version of an appliance's current netmap, 0 if
// it has none yet.
func (a *admin) netmapVersion(ctx context.Context, tenant, appliance string) (uint64, error) {
	var out struct {
		NetmapVersion uint64 `json:"netmap_version"`
	}
	err := a.call(ctx, http.MethodGet, "/api/v1/tenants/"+tenant+"/appliances/"+appliance, nil, &out)
	return out.NetmapVersion, err
}
