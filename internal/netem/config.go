package netem

import (
	"fmt"
	"time"
)

// Config describes one direction of a link. The zero value is a perfect
// link: no rate limit, no delay, no loss.
type Config struct {
	// Rate is the link rate in bits per second; 0 means unlimited. Each
	// packet occupies the transmitter for len·8/Rate.
	Rate float64
	// Delay is the one-way propagation delay.
	Delay time.Duration
	// Jitter adds a uniform random delay in [-Jitter, +Jitter] (the total
	// never below zero). Jitter does not reorder packets: a packet never
	// arrives before the one sent ahead of it, unless Reorder says so.
	Jitter time.Duration
	// QueueBytes and QueuePackets bound the drop-tail queue in front of
	// the transmitter (packets waiting or being sent); 0 means unbounded.
	QueueBytes, QueuePackets int
	// Loss is the probability that a packet is lost in transit (Bernoulli).
	Loss float64
	// GE, if set, adds bursty loss (Gilbert-Elliott).
	GE *GilbertElliott
	// Reorder is the probability that a packet skips the propagation delay
	// and so overtakes the packets in flight ahead of it.
	Reorder float64
	// Duplicate is the probability that a packet is delivered twice.
	Duplicate float64
	// Corrupt is the probability that one random bit of a packet is
	// flipped.
	Corrupt float64
	// MTU drops (or reports, see TooBig) packets longer than MTU bytes; 0
	// means no limit.
	MTU int
	// TooBig, if set, is called with each packet over the MTU instead of
	// silently dropping it (it is counted as dropped either way), so that a
	// caller can answer with ICMP "packet too big".
	TooBig func(pkt []byte)
	// Outages are the intervals, from the link's start, in which the link
	// is down: a packet whose transmission would start inside one is lost.
	Outages []Outage
	// Seed makes the random choices repeatable.
	Seed uint64
	// Capture, if set, is called with every packet as it is delivered.
	Capture func(t time.Time, pkt []byte)
}

// Outage is a link-down interval [From, To) measured from the link's start.
type Outage struct{ From, To time.Duration }

// Validate checks the configuration.
func (c *Config) Validate() error {
	prob := func(name string, p float64) error {
		if p < 0 || p > 1 || p != p {
			return fmt.Errorf("%s %v: want a probability in [0, 1]", name, p)
		}
		return nil
	}
	for _, e := range []error{prob("loss", c.Loss), prob("reorder", c.Reorder), prob("duplicate", c.Duplicate), prob("corrupt", c.Corrupt)} {
		if e != nil {
			return e
		}
	}
	if c.Rate < 0 || c.Delay < 0 || c.Jitter < 0 || c.QueueBytes < 0 || c.QueuePackets < 0 || c.MTU < 0 {
		return fmt.Errorf("rate, delay, jitter, queue and mtu must not be negative")
	}
	if c.GE != nil {
		if err := c.GE.validate(); err != nil {
			return err
		}
	}
	for _, o := range c.Outages {
		if o.From < 0 || o.To < o.From {
			return fmt.Errorf("outage %v-%v: want 0 ≤ from ≤ to", o.From, o.To)
		}
	}
	return nil
}

// GilbertElliott is a two-state Markov loss model (Gilbert 1960, Elliott
// 1963): in the good state packets are lost with LossGood, in the bad
// state with LossBad; after each packet the state flips from good to bad
// with P and from bad to good with R. Mean burst length in the bad state
// is 1/R packets.
type GilbertElliott struct {
	P, R              float64
	LossGood, LossBad float64
}

// GEFromMean returns the simple Gilbert model (every packet in the bad
// state lost, none in the good one) with the given mean loss rate and mean
// burst length in packets.
func GEFromMean(loss, burst float64) (GilbertElliott, error) {
	if loss <= 0 || loss >= 1 || burst < 1 {
		return GilbertElliott{}, fmt.Errorf("gilbert-elliott: loss %v, burst %v: want 0 < loss < 1, burst ≥ 1", loss, burst)
	}
	r := 1 / burst
	return GilbertElliott{P: loss * r / (1 - loss), R: r, LossBad: 1}, nil
}

// MeanLoss is the model's long-run loss rate.
func (g GilbertElliott) MeanLoss() float64 {
	if g.P+g.R == 0 {
		return g.LossGood
	}
	bad := g.P / (g.P + g.R)
	return bad*g.LossBad + (1-bad)*g.LossGood
}

func (g GilbertElliott) validate() error {
	for _, p := range []float64{g.P, g.R, g.LossGood, g.LossBad} {
		if p < 0 || p > 1 || p != p {
			return fmt.Errorf("gilbert-elliott %+v: every parameter is a probability", g)
		}
	}
	return nil
}

// transparent reports whether c impairs nothing (Seed and Capture aside).
func (c Config) transparent() bool {
	return c.Rate == 0 && c.Delay == 0 && c.Jitter == 0 && c.QueueBytes == 0 && c.QueuePackets == 0 && c.Loss == 0 &&
		c.GE == nil && c.Reorder == 0 && c.Duplicate == 0 && c.Corrupt == 0 && c.MTU == 0 && len(c.Outages) == 0
}
