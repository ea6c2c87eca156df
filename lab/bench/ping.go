package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Ping is the outcome of one run of ping(8) from iputils.
type Ping struct {
	Sent     int       // echo requests sent
	Received int       // distinct echo replies
	RTTs     []float64 // round-trip time of each reply, in milliseconds, in order
}

// Median is the median round-trip time in milliseconds (NaN with no
// replies).
func (p Ping) Median() float64 { return Median(p.RTTs) }

var (
	pingReplyRE   = regexp.MustCompile(`^\d+ bytes from .*\bicmp_seq=\d+ .*\btime[=<]([0-9.]+) ms`)
	pingSummaryRE = regexp.MustCompile(`^(\d+) packets transmitted, (\d+) received`)
)

// ParsePing reads the output of `ping -n` (iputils): one line per reply
// and the statistics line. Duplicate replies are left out.
func ParsePing(out []byte) (Ping, error) {
	var p Ping
	summary := false
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if m := pingReplyRE.FindStringSubmatch(line); m != nil {
			if strings.Contains(line, "(DUP!)") {
				continue
			}
			v, err := strconv.ParseFloat(m[1], 64)
			if err != nil {
				return Ping{}, fmt.Errorf("ping output: bad time in %q", line)
			}
			p.RTTs = append(p.RTTs, v)
			continue
		}
		if m := pingSummaryRE.FindStringSubmatch(line); m != nil {
			p.Sent, _ = strconv.Atoi(m[1])
			p.Received, _ = strconv.Atoi(m[2])
			summary = true
		}
	}
	if !summary {
		return Ping{}, errors.New("ping output has no statistics line")
	}
	if p.Received != len(p.RTTs) {
		return Ping{}, fmt.Errorf("ping output: %d replies counted but %d listed", p.Received, len(p.RTTs))
	}
	return p, nil
}

// RTT is the round-trip time the tunnel adds between the two appliances:
// the median RTT to the peer appliance's overlay address, through the
// tunnel, minus the median RTT to its underlay address, on the same pair of
// machines without the tunnel.
type RTT struct {
	// AddedMS is TunnelMS - UnderlayMS.
	AddedMS    float64 `json:"added_ms"`
	TunnelMS   float64 `json:"tunnel_ms"`
	UnderlayMS float64 `json:"underlay_ms"`
	// Samples are the replies each median is taken over; Lost the
	// requests that got none.
	TunnelSamples   int `json:"tunnel_samples"`
	TunnelLost      int `json:"tunnel_lost"`
	UnderlaySamples int `json:"underlay_samples"`
	UnderlayLost    int `json:"underlay_lost"`
}

// measureRTT pings the server appliance from the client appliance, first
// on its underlay address, then on its overlay address.
func (b *bench) measureRTT(ctx context.Context) (RTT, error) {
	under, err := b.ping(ctx, b.client.Name, b.underlay)
	if err != nil {
		return RTT{}, fmt.Errorf("underlay RTT: %w", err)
	}
	tun, err := b.ping(ctx, b.client.Name, b.server.OverlayAddr)
	if err != nil {
		return RTT{}, fmt.Errorf("tunnel RTT: %w", err)
	}
	r := RTT{
		TunnelMS: tun.Median(), UnderlayMS: under.Median(),
		TunnelSamples: tun.Received, TunnelLost: tun.Sent - tun.Received,
		UnderlaySamples: under.Received, UnderlayLost: under.Sent - under.Received,
	}
	r.AddedMS = r.TunnelMS - r.UnderlayMS
	return r, nil
}

// ping sends opts.Pings echo requests from node to dst and fails if more
// than a tenth go unanswered.
func (b *bench) ping(ctx context.Context, node string, dst netip.Addr) (Ping, error) {
	n, every := b.opts.Pings, b.opts.PingInterval
	ctx, cancel := context.WithTimeout(ctx, 2*time.Duration(n)*every+10*time.Second)
	defer cancel()
	out, err := b.output(ctx, node, "ping", "-n", "-c", strconv.Itoa(n),
		"-i", strconv.FormatFloat(every.Seconds(), 'f', -1, 64), "-W", "1", dst.String())
	// ping exits 1 when replies are missing; the output still counts them.
	var ce *cmdError
	if err != nil && !(errors.As(err, &ce) && exitCode(ce.err) == 1) {
		return Ping{}, err
	}
	p, perr := ParsePing(out)
	if perr != nil {
		return Ping{}, errors.Join(perr, err)
	}
	if lost := p.Sent - p.Received; p.Sent == 0 || lost*10 > p.Sent {
		return Ping{}, fmt.Errorf("%s -> %s: %d of %d echo requests unanswered", node, dst, lost, p.Sent)
	}
	return p, nil
}
