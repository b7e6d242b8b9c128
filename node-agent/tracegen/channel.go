package tracegen

import (
	"math"
	"math/rand/v2"
)

// Coding is how a covert channel turns bits into activity.
type Coding string

// Codings.
const (
	// NRZ: active for the whole slot of a 1 bit.
	NRZ Coding = "nrz"
	// RZ: active for the first Duty of the slot of a 1 bit.
	RZ Coding = "rz"
	// Manchester: a 1 is active-then-idle, a 0 idle-then-active.
	Manchester Coding = "manchester"
	// Alternating sends 1010... (a carrier or calibration pattern).
	Alternating Coding = "alternating"
)

// channel is the sender's modulation: level(t) in {0,1}.
type channel struct {
	period  float64 // seconds per bit
	coding  Coding
	duty    float64 // RZ active share of a slot
	jitter  []float64
	bits    []bool
	onset   float64
	msgLen  int // slots per message
	gapLen  int // idle slots between messages
	stopped float64
}

func newChannel(rng *rand.Rand, period float64, coding Coding, duty float64, onset, end float64, txDuty float64) *channel {
	n := int((end-onset)/period) + 2
	c := &channel{period: period, coding: coding, duty: duty, onset: onset, stopped: end}
	c.bits = make([]bool, n)
	c.jitter = make([]float64, n+1)
	for i := range c.bits {
		c.bits[i] = rng.IntN(2) == 1
		if coding == Alternating {
			c.bits[i] = i%2 == 0
		}
	}
	for i := range c.jitter {
		// Sender and receiver resynchronise on timestamps every bit, so
		// slot boundaries jitter without drifting.
		c.jitter[i] = rng.NormFloat64() * 0.02 * period
	}
	c.msgLen = n
	if txDuty < 1 {
		c.msgLen = 32 + rng.IntN(96)
		c.gapLen = int(float64(c.msgLen) * (1 - txDuty) / txDuty)
	}
	return c
}

// level is the sender's activity at time t (seconds), 0 or 1.
func (c *channel) level(t float64) float64 {
	if t < c.onset || t >= c.stopped {
		return 0
	}
	x := (t - c.onset) / c.period
	k := int(x)
	if k+1 >= len(c.jitter) {
		return 0
	}
	// Jittered slot: [k + j_k, k+1 + j_{k+1}).
	if t-c.onset < float64(k)*c.period+c.jitter[k] {
		k--
	} else if t-c.onset >= float64(k+1)*c.period+c.jitter[k+1] {
		k++
	}
	if k < 0 || k >= len(c.bits) {
		return 0
	}
	if c.gapLen > 0 && k%(c.msgLen+c.gapLen) >= c.msgLen {
		return 0
	}
	start := float64(k)*c.period + c.jitter[k]
	phase := (t - c.onset - start) / c.period
	b := c.bits[k]
	switch c.coding {
	case RZ:
		if b && phase < c.duty {
			return 1
		}
		return 0
	case Manchester:
		if b == (phase < 0.5) {
			return 1
		}
		return 0
	default:
		if b {
			return 1
		}
		return 0
	}
}

// phases is an on/off process with random durations: a victim's sensitive
// phases, a compiler's jobs.
type phases struct {
	rng          *rand.Rand
	onMin, onMax float64
	offMin       float64
	offMax       float64
	on           bool
	until        float64
}

func (p *phases) at(t float64) bool {
	for t >= p.until {
		p.on = !p.on
		if p.on {
			p.until += p.onMin + p.rng.Float64()*(p.onMax-p.onMin)
		} else {
			p.until += p.offMin + p.rng.Float64()*(p.offMax-p.offMin)
		}
	}
	return p.on
}

func lognormal(rng *rand.Rand, sigma float64) float64 {
	return math.Exp(rng.NormFloat64()*sigma - sigma*sigma/2)
}
