// Package replay is a collector that plays a recorded sidewatch trace
// (format v1) into the agent's pipeline at real-time pace, as if the
// counters and samples came from perf now: rows of the VMIs the agent
// watches (matched by namespace and name) are delivered with their times
// moved to the present; rows of other VMIs are skipped. It lets a node
// without a PMU run the real agent on a real attack recording.
package replay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/node-agent/collect"
	"github.com/sidewatch/sidewatch/node-agent/record"
)

func init() {
	collect.Register("replay", func(o collect.Options) (collect.Collector, error) {
		return New(o.Log, Options{Path: o.Source}), nil
	})
}

// Options of a replay.
type Options struct {
	// Path of the trace file.
	Path string
	// Speed multiplies the pace of delivery (default 1: real time); the
	// rows' times keep the trace's spacing.
	Speed float64
	// Loop starts over at the end of the file, continuing in time.
	Loop bool
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
	// Sleep waits (tests); default a timer honouring ctx.
	Sleep func(ctx context.Context, d time.Duration) error
}

// Collector replays a trace.
type Collector struct {
	log  logr.Logger
	opts Options

	mu       sync.Mutex
	watching map[collect.VMIKey]bool

	rows, skipped, samples, readings atomic.Uint64
	done                             atomic.Bool
	stopped                          chan struct{}
	cancel                           context.CancelFunc
}

// New makes a replay collector.
func New(log logr.Logger, opts Options) *Collector {
	if opts.Speed <= 0 {
		opts.Speed = 1
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Sleep == nil {
		opts.Sleep = func(ctx context.Context, d time.Duration) error {
			t := time.NewTimer(d)
			defer t.Stop()
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-t.C:
				return nil
			}
		}
	}
	return &Collector{log: log, opts: opts, watching: map[collect.VMIKey]bool{}}
}

// Name implements collect.Collector.
func (c *Collector) Name() string { return "replay" }

// Probe checks that the trace opens and starts like a v1 trace.
func (c *Collector) Probe(context.Context) error {
	f, err := os.Open(c.opts.Path)
	if err != nil {
		return fmt.Errorf("replay: %w", err)
	}
	defer f.Close()
	if _, err := record.NewReader(f); err != nil {
		return fmt.Errorf("replay %s: %w", c.opts.Path, err)
	}
	return nil
}

// Configure implements collect.Collector: a recording has the events it
// has; the configuration does not change them.
func (c *Collector) Configure(collect.Config) error { return nil }

// SetThreads implements collect.Collector; a replay is fed per VMI.
func (c *Collector) SetThreads([]collect.Thread) error { return nil }

// SetVMIs implements collect.VMISource.
func (c *Collector) SetVMIs(vmis []collect.VMIKey) error {
	m := make(map[collect.VMIKey]bool, len(vmis))
	for _, v := range vmis {
		m[v] = true
	}
	c.mu.Lock()
	c.watching = m
	c.mu.Unlock()
	return nil
}

func (c *Collector) watched(ns, name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.watching[collect.VMIKey{Namespace: ns, Name: name}]
}

// counterNames are the trace's counters in a fixed order: a replayed
// Reading has one slot per counter.
var counterNames = func() []string {
	out := make([]string, len(v1alpha1.AllCounterEvents))
	for i, e := range v1alpha1.AllCounterEvents {
		out[i] = string(e)
	}
	return out
}()

func slotOf(event string) int {
	for i, n := range counterNames {
		if n == event {
			return i
		}
	}
	return -1
}

// Start implements collect.Collector: it plays the file (again and again
// with Loop) until the end, ctx or Close.
func (c *Collector) Start(ctx context.Context, sink collect.Sink) error {
	ctx, cancel := context.WithCancel(ctx)
	c.mu.Lock()
	c.cancel = cancel
	c.stopped = make(chan struct{})
	c.mu.Unlock()
	defer close(c.stopped)
	defer cancel()
	wallStart := c.opts.Now()
	var offset int64 // trace time -> replay time, across loops
	first := true
	for {
		end, err := c.playOnce(ctx, sink, wallStart, &offset, first)
		first = false
		if err != nil {
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		}
		if !c.opts.Loop {
			c.done.Store(true)
			c.log.Info("replay finished", "rows", c.rows.Load(), "skipped", c.skipped.Load())
			<-ctx.Done()
			return nil
		}
		// The next pass starts one interval after this one ended.
		offset = end + int64(100*time.Millisecond)
	}
}

// playOnce plays the file once. offset maps trace time to the replay's
// clock (Unix ns); on the first pass it is fixed by the first row.
func (c *Collector) playOnce(ctx context.Context, sink collect.Sink, wallStart time.Time, offset *int64, first bool) (lastReplayTime int64, err error) {
	f, err := os.Open(c.opts.Path)
	if err != nil {
		return 0, fmt.Errorf("replay: %w", err)
	}
	defer f.Close()
	r, err := record.NewReader(f)
	if err != nil {
		return 0, fmt.Errorf("replay %s: %w", c.opts.Path, err)
	}
	var (
		pending collect.Reading
		have    bool
		t0      int64 = -1
		base    int64
	)
	flush := func() {
		if have {
			sink.Reading(&pending)
			c.readings.Add(1)
			have = false
		}
	}
	for {
		if err := ctx.Err(); err != nil {
			return lastReplayTime, err
		}
		row, err := r.Next()
		if err == io.EOF {
			flush()
			return lastReplayTime, nil
		}
		if err != nil {
			flush()
			return lastReplayTime, fmt.Errorf("replay %s: %w", c.opts.Path, err)
		}
		if t0 < 0 {
			t0 = row.TimeNS
			if first {
				base = wallStart.UnixNano()
			} else {
				base = *offset
			}
		}
		// Times keep the trace's spacing (periods and rates stay what they
		// were); Speed only changes how fast rows are delivered.
		at := base + (row.TimeNS - t0)
		lastReplayTime = at
		due := wallStart.UnixNano() + int64(float64(at-wallStart.UnixNano())/c.opts.Speed)
		if wait := time.Duration(due - c.opts.Now().UnixNano()); wait > 0 {
			flush()
			if err := c.opts.Sleep(ctx, wait); err != nil {
				return lastReplayTime, err
			}
		}
		c.rows.Add(1)
		if !c.watched(row.Namespace, row.VMI) {
			c.skipped.Add(1)
			continue
		}
		stream := collect.StreamID{Namespace: row.Namespace, VMI: row.VMI, VCPU: row.VCPU}
		if row.Sample {
			flush()
			mode := collect.ModeUnknown
			if row.Value != 0 {
				mode = collect.ModeGuestUser
				if row.Value >= 0xffff800000000000 {
					mode = collect.ModeGuestKernel
				}
			}
			c.samples.Add(1)
			sink.Sample(&collect.Sample{Stream: stream, Time: at, Event: row.Event, IP: row.Value, Mode: mode})
			continue
		}
		slot := slotOf(row.Event)
		if have && (pending.Stream != stream || pending.Time != at || pending.Has(slot)) {
			flush()
		}
		if !have {
			pending = collect.Reading{Stream: stream, Time: at, Events: counterNames}
			have = true
		}
		pending.Values[slot] = row.Value
		pending.Valid |= 1 << slot
	}
}

// Done reports whether a non-looping replay reached the end of the file.
func (c *Collector) Done() bool { return c.done.Load() }

// Stats implements collect.Collector.
func (c *Collector) Stats() collect.Stats {
	return collect.Stats{Samples: c.samples.Load(), Readings: c.readings.Load()}
}

// Rows is how many rows were read and how many belonged to VMIs not
// watched.
func (c *Collector) Rows() (read, skipped uint64) { return c.rows.Load(), c.skipped.Load() }

// Close implements collect.Collector.
func (c *Collector) Close() error {
	c.mu.Lock()
	cancel, stopped := c.cancel, c.stopped
	c.mu.Unlock()
	if cancel != nil {
		cancel()
		<-stopped
	}
	return nil
}
