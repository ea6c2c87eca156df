package appliance

import (
	"context"
	"time"
)

// PairReport is one pair member's view of its pair, for the controller
// (POST /api/v1/pair/report): its role, the term the role belongs to, since
// when it holds it, whether it hears its partner, and the last failover it
// saw. The controller derives the site's active member from the two
// members' latest reports (docs/controller.md, "Pairs").
type PairReport struct {
	Role         string        `json:"role"` // "active" or "standby"
	Term         uint64        `json:"term"`
	Since        time.Time     `json:"since"`
	PartnerAlive bool          `json:"partner_alive"`
	LastFailover *PairFailover `json:"last_failover,omitempty"`
}

// PairFailover is a change of a pair's active member. From and To are
// appliance names; Reason should start with one of partner-down, drain,
// preempt, priority or manual (the controller counts failovers by it).
type PairFailover struct {
	At     time.Time `json:"at"`
	From   string    `json:"from,omitempty"`
	To     string    `json:"to"`
	Reason string    `json:"reason,omitempty"`
}

// PairReportResult is the pair as the controller holds it after a report.
type PairReportResult struct {
	Active string `json:"active"` // the active member's name, "" if none
	Term   int64  `json:"term"`
}

// ReportPair sends the member's view of its pair with the device
// credential.
func (c *Client) ReportPair(ctx context.Context, r PairReport) (PairReportResult, error) {
	var res PairReportResult
	err := c.postDevice(ctx, "/api/v1/pair/report", r, &res)
	return res, err
}
