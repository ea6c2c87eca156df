// Package lab builds a demo Causeway overlay out of Linux network namespaces
// on one machine: an Internet router, a controller in the cloud, three sites
// (an office, a cloud VPC and a home network behind NAT), their appliances
// and a few hosts, for `causeway lab` and for the end-to-end tests. The lab
// creates the tenant, the sites and one enrollment token per site through
// the controller's API, and every appliance enrolls and follows the
// controller: the lab writes no appliance config of its own.
//
// Everything lives inside namespaces named cw-<instance>-<node>; nothing is
// configured in the namespace the caller runs in. Every instance keeps its
// state (what was created, which processes were started) in a directory of
// its own, written before anything is created, so that Down, Remove and Sweep
// can take down a partial or crashed instance. Instances with different names
// are independent and can run at the same time.
//
// The topology (addresses in the underlay 198.18.0.0/15, the sites' LANs in
// 10.0.0.0/8 and 172.16.0.0/12, overlay addresses in 100.64.0.0/10):
//
//	                                  cloud (controller)
//	                                           │
//	office-1-host ─ [office-1-lan] ─ office-1 ─┤
//	vpc-1-backend-1 ┬ [vpc-1-lan] ── vpc-1 ────┼─ inet
//	vpc-1-backend-2 ┘                          │
//	                                           │ (MTU 1400)
//	home-1-host ─ [home-1-lan] ─ home-1 ─ home-1-router (NAT)
//
// The nodes in brackets are switches: a Linux bridge in a namespace of its
// own, so that more devices can join a site's LAN later.
//
// Building a lab needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN).
package lab
