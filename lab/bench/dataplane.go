package bench

import (
	"context"
	"errors"
	"fmt"
)

// Dataplane names one of the two implementations the bench compares.
type Dataplane string

// The dataplanes.
const (
	Causeway Dataplane = "causeway" // `causeway appliance`
	Stock    Dataplane = "stock"    // the wireguard-go daemon, configured with wg and ip
)

// dataplane is one implementation, on both appliances of the path.
type dataplane interface {
	kind() Dataplane
	// start brings it up on both appliances. After an error, stop still
	// removes whatever start did.
	start(ctx context.Context) error
	// stop takes it down on both appliances. It needs no live context, so
	// that it also runs after a cancellation; it is idempotent.
	stop() error
	// iface is the overlay interface on appliance node.
	iface(node string) string
}

// causewayPlane is the appliances the lab runs. The bench only stops and
// starts them through the lab.
type causewayPlane struct {
	b *bench
	// stopped holds the appliances the bench has stopped.
	stopped map[string]bool
}

func (c *causewayPlane) kind() Dataplane { return Causeway }

func (c *causewayPlane) iface(node string) string {
	return c.b.topo.ApplianceConfig(node).Interface
}

func (c *causewayPlane) start(ctx context.Context) error {
	for _, cfg := range c.b.appliances() {
		if !c.stopped[cfg.Name] {
			continue
		}
		c.b.log.Debug("starting appliance", "appliance", cfg.Name)
		if err := c.b.topo.StartAppliance(ctx, cfg.Name); err != nil {
			return fmt.Errorf("starting appliance %s: %w", cfg.Name, err)
		}
		delete(c.stopped, cfg.Name)
	}
	return nil
}

func (c *causewayPlane) stop() error {
	if c.stopped == nil {
		c.stopped = map[string]bool{}
	}
	var errs []error
	for _, cfg := range c.b.appliances() {
		if c.stopped[cfg.Name] {
			continue
		}
		c.b.log.Debug("stopping appliance", "appliance", cfg.Name)
		// Whatever the outcome, the appliance is to be started again.
		c.stopped[cfg.Name] = true
		if err := c.b.topo.StopAppliance(cfg.Name); err != nil {
			errs = append(errs, fmt.Errorf("stopping appliance %s: %w", cfg.Name, err))
		}
	}
	return errors.Join(errs...)
}
