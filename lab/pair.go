package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/causeway-net/causeway/appliance"
	"github.com/causeway-net/causeway/controller/netmap"
)

// defaultPriority is the pair priority the controller gives an appliance.
const defaultPriority = netmap.DefaultPriority

// PairState returns the named pair member's view of its pair, from its
// GET /pair.
func (l *Lab) PairState(ctx context.Context, name string) (appliance.PairView, error) {
	var v appliance.PairView
	a := l.t.appliance(name)
	if a == nil || a.pair == nil {
		return v, fmt.Errorf("lab: %q is not a pair member", name)
	}
	c := l.HTTPClient(name)
	defer c.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+appliance.DefaultHTTPListen+"/pair", nil)
	if err != nil {
		return v, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return v, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return v, fmt.Errorf("lab: %s: GET /pair: %s", name, resp.Status)
	}
	return v, json.NewDecoder(resp.Body).Decode(&v)
}

// pairMembers are the pairs of the topology: each site's two members, in
// topology order.
func (t *topology) pairMembers() map[string][]string {
	out := map[string][]string{}
	for _, a := range t.appliances {
		if a.pair != nil {
			out[a.site] = append(out[a.site], a.name)
		}
	}
	return out
}

// waitPairs waits until each pair has exactly one active member, the
// other a standby that hears it, and both members' netmaps name the
// active one as the controller's choice (the remote sites route the site
// to it).
func (l *Lab) waitPairs(ctx context.Context) error {
	for site, members := range l.t.pairMembers() {
		err := poll(ctx, func(ctx context.Context) error {
			var active []string
			views := map[string]appliance.PairView{}
			for _, m := range members {
				v, err := l.PairState(ctx, m)
				if err != nil {
					return err
				}
				views[m] = v
				if v.Role == "active" {
					active = append(active, m)
				}
			}
			if len(active) != 1 {
				return fmt.Errorf("pair %s: active members %v, want one", site, active)
			}
			for _, m := range members {
				v := views[m]
				if !v.Partner.Alive || v.Active != active[0] || v.ControllerChoice != active[0] {
					return fmt.Errorf("pair %s: %s sees partner alive %v, active %q, the controller's choice %q; want %s",
						site, m, v.Partner.Alive, v.Active, v.ControllerChoice, active[0])
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("lab: pair %s: %w", site, err)
		}
		l.log.Info("pair up", "site", site)
	}
	return nil
}

// pairStatuses reads every running pair member's state, with a short
// deadline: Status must answer also when a member hangs.
func (l *Lab) pairStatuses(running func(string) bool) map[string]*appliance.PairView {
	out := map[string]*appliance.PairView{}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	for _, members := range l.t.pairMembers() {
		for _, m := range members {
			if !running(m) {
				continue
			}
			if v, err := l.PairState(ctx, m); err == nil {
				out[m] = &v
			} else if errors.Is(err, context.DeadlineExceeded) {
				return out
			}
		}
	}
	return out
}

// PairStatus is one pair of the lab in Status.
type PairStatus struct {
	Site string `json:"site"`
	// Active is the member that holds the VIP ("" when neither does, or
	// neither runs), Since when it took the role.
	Active  string   `json:"active"`
	Members []string `json:"members"`
	Since   string   `json:"since,omitempty"`
	// LastFailover is the last move of the role, as the active member (or
	// else the other) saw it.
	LastFailover *PairFailoverStatus `json:"last_failover,omitempty"`
}

// PairFailoverStatus is a move of a pair's active role.
type PairFailoverStatus struct {
	At     string `json:"at"`
	From   string `json:"from"`
	To     string `json:"to"`
	Reason string `json:"reason"`
}

// ApplianceStatusPair is a pair member's role in Status.
type ApplianceStatusPair struct {
	Role   string `json:"role"`   // active, standby, stopped; "" if not known (not running)
	Active bool   `json:"active"` // this member holds the VIP
	Term   uint64 `json:"term"`
	Since  string `json:"since,omitempty"`
}

// pairStatus builds the pairs of Status from the members' views.
func pairStatus(t *topology, views map[string]*appliance.PairView) []PairStatus {
	out := []PairStatus{}
	var sites []string
	for _, a := range t.appliances {
		if a.pair != nil && !slices.Contains(sites, a.site) {
			sites = append(sites, a.site)
		}
	}
	for _, site := range sites {
		ms := t.pairMembers()[site]
		ps := PairStatus{Site: site, Members: ms}
		var from *appliance.PairView
		for _, m := range ms {
			if v := views[m]; v != nil && v.Role == "active" {
				ps.Active, ps.Since, from = m, rfc3339(v.Since), v
			}
		}
		if from == nil {
			for _, m := range ms {
				if v := views[m]; v != nil && v.Failover != nil {
					from = v
				}
			}
		}
		if from != nil && from.Failover != nil {
			f := from.Failover
			ps.LastFailover = &PairFailoverStatus{At: rfc3339(f.At), From: f.From, To: f.To, Reason: f.Reason}
		}
		out = append(out, ps)
	}
	return out
}

func rfc3339(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}
