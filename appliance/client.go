package appliance

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/causeway-net/causeway/controller/netmap"
	"github.com/causeway-net/causeway/dataplane/wgkey"
	"github.com/causeway-net/causeway/internal/atomicfile"
)

// EnrollmentFile keeps the device credential inside the state directory.
const EnrollmentFile = "enrollment.json"

// Enrollment is what an enrolled appliance remembers about its controller.
// The file is 0600: the credential is as good as the device's identity.
type Enrollment struct {
	Controller    string `json:"controller"`
	ApplianceID   string `json:"appliance_id"`
	Name          string `json:"name"`
	Credential    string `json:"credential"`
	CAFingerprint string `json:"ca_fingerprint,omitempty"`
}

// LoadEnrollment returns the saved enrollment, or (nil, nil) if the
// appliance has not enrolled yet.
func LoadEnrollment(stateDir string) (*Enrollment, error) {
	b, err := os.ReadFile(filepath.Join(stateDir, EnrollmentFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var e Enrollment
	if err := json.Unmarshal(b, &e); err != nil || e.Credential == "" || e.Controller == "" {
		return nil, fmt.Errorf("%s is damaged; remove it to enroll again", filepath.Join(stateDir, EnrollmentFile))
	}
	return &e, nil
}

func saveEnrollment(stateDir string, e *Enrollment) error {
	b, err := json.MarshalIndent(e, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(stateDir, EnrollmentFile), b, 0o600)
}

// Client talks to the controller's appliance endpoints.
type Client struct {
	base *url.URL
	http *http.Client
	cred string
}

// ClientOptions configure NewClient.
type ClientOptions struct {
	// Controller is the base URL, e.g. https://controller.example:8443.
	Controller string
	// CAFingerprint, if set, pins the controller's CA: the hex SHA-256 of
	// the CA certificate, which must be in the chain the controller sends
	// and must have signed its certificate. Empty means the system roots.
	CAFingerprint string
	// Credential is the device credential for Sync; empty before enrollment.
	Credential string
}

// NewClient checks the URL and builds the HTTP client.
func NewClient(o ClientOptions) (*Client, error) {
	u, err := url.Parse(o.Controller)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("controller URL: want https://host[:port], got %q", o.Controller)
	}
	tr := &http.Transport{
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 15 * time.Second}).DialContext,
		TLSHandshakeTimeout:   5 * time.Second,
		ResponseHeaderTimeout: 0, // long polls
		IdleConnTimeout:       90 * time.Second,
		ForceAttemptHTTP2:     true,
	}
	if o.CAFingerprint != "" {
		pin, err := hex.DecodeString(strings.ReplaceAll(o.CAFingerprint, ":", ""))
		if err != nil || len(pin) != sha256.Size {
			return nil, fmt.Errorf("CA fingerprint: want 64 hex digits (SHA-256), got %q", o.CAFingerprint)
		}
		tr.TLSClientConfig = pinnedTLS(pin)
	}
	return &Client{base: u, http: &http.Client{Transport: tr}, cred: o.Credential}, nil
}

// pinnedTLS verifies the server against the one CA whose certificate
// hashes to pin. The CA certificate comes from the server's own chain;
// the pin is what makes it trusted.
func pinnedTLS(pin []byte) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // replaced by VerifyConnection below
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("controller sent no certificate")
			}
			roots := x509.NewCertPool()
			found := false
			for _, c := range cs.PeerCertificates {
				sum := sha256.Sum256(c.Raw)
				if bytes.Equal(sum[:], pin) && c.IsCA {
					roots.AddCert(c)
					found = true
				}
			}
			if !found {
				return errors.New("controller's certificate chain does not contain the pinned CA")
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
				DNSName: cs.ServerName, Roots: roots, Intermediates: inter,
			})
			return err
		},
	}
}

// APIError is a refusal from the controller (an RFC 9457 problem).
type APIError struct {
	Status int
	Title  string
	Detail string
}

func (e *APIError) Error() string {
	msg := e.Title
	if e.Detail != "" {
		msg += ": " + e.Detail
	}
	return fmt.Sprintf("controller answered %d: %s", e.Status, msg)
}

// Permanent reports whether retrying the same request cannot help.
func (e *APIError) Permanent() bool {
	return e.Status >= 400 && e.Status < 500 && e.Status != http.StatusTooManyRequests && e.Status != http.StatusRequestTimeout
}

func apiError(resp *http.Response) error {
	var p struct {
		Title  string `json:"title"`
		Detail string `json:"detail"`
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if json.Unmarshal(b, &p) != nil || p.Title == "" {
		p.Title = http.StatusText(resp.StatusCode)
	}
	return &APIError{Status: resp.StatusCode, Title: p.Title, Detail: p.Detail}
}

// EnrollRequest is what the appliance sends to enroll.
type EnrollRequest struct {
	Token     string
	Name      string // empty: the controller picks one
	PublicKey wgkey.PublicKey
	Endpoints []netip.AddrPort
}

// Enroll spends a one-time token. It returns the enrollment to save (the
// credential is shown only this once) and the first netmap.
func (c *Client) Enroll(ctx context.Context, req EnrollRequest) (*Enrollment, *netmap.Netmap, error) {
	body := map[string]any{"token": req.Token, "public_key": req.PublicKey.String(), "endpoints": strs(req.Endpoints)}
	if req.Name != "" {
		body["name"] = req.Name
	}
	b, _ := json.Marshal(body)
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base.JoinPath("/api/v1/enroll").String(), bytes.NewReader(b))
	if err != nil {
		return nil, nil, err
	}
	hreq.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(hreq)
	if err != nil {
		return nil, nil, fmt.Errorf("enrolling: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("enrolling: %w", apiError(resp))
	}
	var out struct {
		Appliance struct {
			ID   string `json:"id"`
			Name string `json:"name"`
		} `json:"appliance"`
		Credential string          `json:"credential"`
		Netmap     json.RawMessage `json:"netmap"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, netmap.MaxSize)).Decode(&out); err != nil {
		return nil, nil, fmt.Errorf("enrolling: bad answer: %w", err)
	}
	if out.Credential == "" {
		return nil, nil, errors.New("enrolling: the controller sent no credential")
	}
	nm, err := netmap.Decode(out.Netmap)
	if err != nil {
		return nil, nil, fmt.Errorf("enrolling: %w", err)
	}
	c.cred = out.Credential
	return &Enrollment{Controller: c.base.String(), ApplianceID: out.Appliance.ID, Name: out.Appliance.Name, Credential: out.Credential}, nm, nil
}

// netmapBaseHeader marks a sync answer that is a delta against the
// version it names (the controller's api.NetmapBaseHeader).
const netmapBaseHeader = "Causeway-Netmap-Base"

// Sync long-polls for a netmap newer than have (nil before the first
// one). It asks for a delta against have, which the controller sends when
// it can (a change to a few peers of a large tenant is then a few hundred
// bytes instead of every peer), and returns the full netmap either way. It
// returns (nil, nil) when the wait ended with nothing new.
func (c *Client) Sync(ctx context.Context, have *netmap.Netmap, wait time.Duration) (*netmap.Netmap, error) {
	var since uint64
	q := url.Values{"wait": {wait.String()}}
	if have != nil {
		since = have.Version
		q.Set("delta", "1")
	}
	q.Set("since", strconv.FormatUint(since, 10))
	u := c.base.JoinPath("/api/v1/sync")
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.cred)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusNoContent:
		return nil, nil
	case http.StatusOK:
	default:
		return nil, apiError(resp)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, netmap.MaxSize+1))
	if err != nil {
		return nil, err
	}
	base := resp.Header.Get(netmapBaseHeader)
	if base == "" {
		return netmap.Decode(b)
	}
	if have == nil || base != strconv.FormatUint(have.Version, 10) {
		return nil, fmt.Errorf("controller sent a delta against version %s, but this appliance holds %d", base, since)
	}
	d, err := netmap.DecodeDelta(b)
	if err != nil {
		return nil, err
	}
	return have.Apply(d)
}

func strs[T fmt.Stringer](vs []T) []string {
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = v.String()
	}
	return out
}

// PathPoint is one interval of one path as the controller stores it
// (POST /api/v1/paths/report). Figures are counts and microseconds.
type PathPoint struct {
	Peer      string    `json:"peer"`
	Uplink    string    `json:"uplink"`
	Remote    string    `json:"remote"`
	Start     time.Time `json:"start"`
	End       time.Time `json:"end"`
	Sent      uint64    `json:"sent"`
	Received  uint64    `json:"received"`
	Lost      uint64    `json:"lost"`
	RTTMinUS  int64     `json:"rtt_min_us"`
	RTTMeanUS int64     `json:"rtt_mean_us"`
	RTTP50US  int64     `json:"rtt_p50_us"`
	RTTP99US  int64     `json:"rtt_p99_us"`
	RTTMaxUS  int64     `json:"rtt_max_us"`
	JitterUS  int64     `json:"jitter_us"`
}

// ReportResult is the controller's answer to a path report.
type ReportResult struct {
	Accepted  int64 `json:"accepted"`
	Duplicate int64 `json:"duplicate"` // stored before: a resend
	Ignored   int64 `json:"ignored"`   // an unknown peer, or past retention
}

// ReportPaths sends path points with the device credential. Sending the
// same points again is harmless: the controller stores each once.
func (c *Client) ReportPaths(ctx context.Context, pts []PathPoint) (ReportResult, error) {
	var res ReportResult
	err := c.postDevice(ctx, "/api/v1/paths/report", map[string]any{"points": pts}, &res)
	return res, err
}

// maxAnswer bounds the answer to a report that postDevice decodes.
const maxAnswer = 1 << 20

// postDevice POSTs body as JSON to path with the device credential and
// decodes a 200 answer into out. Any other status is an *APIError; an
// answer that is not JSON of out's shape is an error too.
func (c *Client) postDevice(ctx context.Context, path string, body, out any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base.JoinPath(path).String(), bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.cred)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return apiError(resp)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxAnswer)).Decode(out); err != nil {
		return fmt.Errorf("bad answer from %s: %w", path, err)
	}
	return nil
}
