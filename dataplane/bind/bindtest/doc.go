// Package bindtest builds throwaway network namespaces and veth links for
// tests of the multipath bind and of what runs over it. The namespaces are
// unnamed (nothing under /run/netns) and vanish when the test ends; nothing
// is configured in the namespace the test runs in. Tests need root
// (CAP_NET_ADMIN and CAP_SYS_ADMIN); Require skips them otherwise. BulkTUN
// is an in-memory TUN for throughput benchmarks.
package bindtest
