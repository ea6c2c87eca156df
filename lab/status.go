package lab

import (
	"cmp"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/causeway-net/causeway/appliance"
)

// Status describes a running instance. Its JSON form is printed by
// `causeway lab status --json` and documented in docs/lab.md; fields are
// only ever added to it. Addresses carry no prefix length.
type Status struct {
	Instance   string            `json:"instance"`
	StateDir   string            `json:"state_dir"`
	Hosts      []HostStatus      `json:"hosts"`
	Appliances []ApplianceStatus `json:"appliances"`
	Services   []ServiceStatus   `json:"services"`
	// Controller is the controller the appliances enroll with and follow.
	Controller ControllerStatus `json:"controller"`
	// Nodes lists every namespace of the instance, including the routers
	// and switches, for `causeway lab exec`.
	Nodes []NodeStatus `json:"nodes"`
	// Pairs are the sites with two appliances: which member is active.
	Pairs []PairStatus `json:"pairs"`
}

// HostStatus is a host on a site's LAN.
type HostStatus struct {
	Name  string   `json:"name"`
	Site  string   `json:"site"`
	Netns string   `json:"netns"`
	Addrs []string `json:"addrs"`
}

// ApplianceStatus is a site appliance.
type ApplianceStatus struct {
	Name  string `json:"name"`
	Site  string `json:"site"`
	Netns string `json:"netns"`
	// PID is the appliance process, or 0 if it is not running.
	PID     int            `json:"pid"`
	Uplinks []UplinkStatus `json:"uplinks"`
	// OverlayAddr is the address the controller allocated, from the last
	// netmap the appliance applied; "" before the first.
	OverlayAddr string   `json:"overlay_addr"`
	LANAddrs    []string `json:"lan_addrs"`
	// Pair is a pair member's role, from its GET /pair (role "" while it
	// does not answer); absent for an appliance that is not a member.
	Pair *ApplianceStatusPair `json:"pair,omitempty"`
}

// UplinkStatus is an appliance's WAN interface.
type UplinkStatus struct {
	Name string `json:"name"`
	Addr string `json:"addr"`
}

// ServiceStatus is a service the lab runs on a host.
type ServiceStatus struct {
	Name string `json:"name"`
	Host string `json:"host"`
	URL  string `json:"url"`
	// PID is the service process, or 0 if it is not running.
	PID int `json:"pid"`
	// UDPEcho is the IP:port of the service's UDP echo, if it has one.
	UDPEcho string `json:"udp_echo,omitempty"`
}

// ControllerStatus is the lab's controller.
type ControllerStatus struct {
	// URL is reachable from the lab's nodes only.
	URL   string `json:"url"`
	Netns string `json:"netns"`
	// PID is the controller process, or 0 if it is not running.
	PID int `json:"pid"`
	// CAFingerprint is the hex SHA-256 of its CA certificate, which the
	// appliances pin; "" before its first start.
	CAFingerprint string `json:"ca_fingerprint"`
	// Tenant holds the lab's sites.
	Tenant string `json:"tenant"`
}

// NodeStatus is one namespace of the lab.
type NodeStatus struct {
	Name  string `json:"name"`
	Role  string `json:"role"` // RoleRouter, RoleSwitch, RoleAppliance, RoleHost, RoleController or RoleServer
	Site  string `json:"site"` // "" for inet, cloud and web-1
	Netns string `json:"netns"`
}

// liveState is what buildStatus learns from the running instance.
type liveState struct {
	// pid returns the running process of an appliance, service or the
	// controller, or 0.
	pid func(name string) int
	// overlay returns an appliance's overlay address, or "".
	overlay func(name string) string
	// pair returns a pair member's view, nil if it does not answer.
	pair          func(name string) *appliance.PairView
	caFingerprint string
}

// buildStatus describes instance.
func buildStatus(t *topology, instance, dir string, live liveState) Status {
	s := Status{
		Instance:   instance,
		StateDir:   dir,
		Hosts:      []HostStatus{},
		Appliances: []ApplianceStatus{},
		Services:   []ServiceStatus{},
		Nodes:      []NodeStatus{},
	}
	views := map[string]*appliance.PairView{}
	for _, n := range t.nodes {
		ns := netnsName(instance, n.name)
		s.Nodes = append(s.Nodes, NodeStatus{Name: n.name, Role: n.role, Site: n.site, Netns: ns})
		if n.role == RoleHost {
			s.Hosts = append(s.Hosts, HostStatus{Name: n.name, Site: n.site, Netns: ns, Addrs: addrStrings(t.addrs(n.name))})
		}
	}
	for _, a := range t.appliances {
		as := ApplianceStatus{
			Name:        a.name,
			Site:        a.site,
			Netns:       netnsName(instance, a.name),
			PID:         live.pid(a.name),
			OverlayAddr: live.overlay(a.name),
			Uplinks:     []UplinkStatus{},
			LANAddrs:    []string{},
		}
		for _, w := range a.wans {
			as.Uplinks = append(as.Uplinks, UplinkStatus{Name: w, Addr: t.iface(a.name, w).addr.Addr().String()})
		}
		for _, e := range t.ifaces(a.name) {
			if e.addr.IsValid() && !slices.Contains(a.wans, e.name) {
				as.LANAddrs = append(as.LANAddrs, e.addr.Addr().String())
			}
		}
		if a.pair != nil {
			as.Pair = &ApplianceStatusPair{}
			if v := live.pair(a.name); v != nil {
				views[a.name] = v
				as.Pair = &ApplianceStatusPair{Role: v.Role, Active: v.Role == "active", Term: v.Term, Since: rfc3339(v.Since)}
			}
		}
		s.Appliances = append(s.Appliances, as)
	}
	for _, sv := range t.services {
		ss := ServiceStatus{Name: sv.name, Host: sv.host, URL: serviceURL(sv), PID: live.pid(sv.name)}
		if sv.udpEcho.IsValid() {
			ss.UDPEcho = sv.udpEcho.String()
		}
		s.Services = append(s.Services, ss)
	}
	s.Pairs = pairStatus(t, views)
	c := t.controller
	s.Controller = ControllerStatus{
		URL:           "https://" + c.listen.String(),
		Netns:         netnsName(instance, c.node),
		PID:           live.pid(controllerName),
		CAFingerprint: live.caFingerprint,
		Tenant:        c.tenant,
	}
	return s
}

func serviceURL(sv serviceSpec) string {
	if sv.listen.Port() == 80 {
		return "http://" + sv.listen.Addr().String() + "/"
	}
	return "http://" + sv.listen.String() + "/"
}

func addrStrings(as []netip.Addr) []string {
	out := make([]string, len(as))
	for i, a := range as {
		out[i] = a.String()
	}
	return out
}

// WriteText writes s as the tables `causeway lab status` prints.
func (s Status) WriteText(w io.Writer) error {
	var rows [][]string
	for _, a := range s.Appliances {
		var up []string
		for _, u := range a.Uplinks {
			up = append(up, u.Name+"="+u.Addr)
		}
		overlay := a.OverlayAddr
		if overlay == "" {
			overlay = "-"
		}
		rows = append(rows, []string{a.Name, a.Site, a.Netns, pidText(a.PID), overlay,
			strings.Join(up, ","), strings.Join(a.LANAddrs, ",")})
	}
	fmt.Fprintf(w, "Lab instance %s (state in %s)\n\n", s.Instance, s.StateDir)
	c := s.Controller
	writeTable(w, []string{"CONTROLLER", "NETNS", "PID", "TENANT", "CA SHA-256"},
		[][]string{{c.URL, c.Netns, pidText(c.PID), c.Tenant, c.CAFingerprint}})
	fmt.Fprintln(w)
	writeTable(w, []string{"APPLIANCE", "SITE", "NETNS", "PID", "OVERLAY", "UPLINKS", "LAN"}, rows)

	if len(s.Pairs) > 0 {
		rows = nil
		for _, p := range s.Pairs {
			last := "-"
			if f := p.LastFailover; f != nil {
				last = fmt.Sprintf("%s %s -> %s (%s)", f.At, cmp.Or(f.From, "-"), f.To, f.Reason)
			}
			rows = append(rows, []string{p.Site, cmp.Or(p.Active, "none"), strings.Join(p.Members, ","), cmp.Or(p.Since, "-"), last})
		}
		fmt.Fprintln(w)
		writeTable(w, []string{"PAIR", "ACTIVE", "MEMBERS", "SINCE", "LAST FAILOVER"}, rows)
	}

	rows = nil
	for _, h := range s.Hosts {
		rows = append(rows, []string{h.Name, h.Site, h.Netns, strings.Join(h.Addrs, ",")})
	}
	fmt.Fprintln(w)
	writeTable(w, []string{"HOST", "SITE", "NETNS", "ADDRS"}, rows)

	rows = nil
	for _, sv := range s.Services {
		echo := sv.UDPEcho
		if echo == "" {
			echo = "-"
		}
		rows = append(rows, []string{sv.Name, sv.Host, sv.URL, echo, pidText(sv.PID)})
	}
	fmt.Fprintln(w)
	writeTable(w, []string{"SERVICE", "HOST", "URL", "UDP ECHO", "PID"}, rows)

	var others []string
	for _, n := range s.Nodes {
		if n.Role == RoleRouter || n.Role == RoleSwitch {
			others = append(others, n.Name)
		}
	}
	fmt.Fprintf(w, "\nRouters and switches: %s\n", strings.Join(others, ", "))
	var servers []string
	for _, n := range s.Nodes {
		if n.Role == RoleServer {
			servers = append(servers, n.Name)
		}
	}
	_, err := fmt.Fprintf(w, "Internet hosts: %s\n", strings.Join(servers, ", "))
	return err
}

func pidText(pid int) string {
	if pid == 0 {
		return "stopped"
	}
	return fmt.Sprint(pid)
}

func writeTable(w io.Writer, header []string, rows [][]string) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	tw.Flush()
}
