package trace

// Event is the event column of a row: one of the seven counters, or a
// sample of one of them.
type Event uint8

// Counter events. Their order matches v1alpha1.AllCounterEvents.
const (
	EventNone Event = iota
	LLCReferences
	LLCMisses
	L1DMisses
	BusLocks
	SplitLocks
	Instructions
	Cycles
)

// NumCounters is the number of counter events; counter events are
// 1..NumCounters and the sample of counter c is c+NumCounters.
const NumCounters = 7

// NumEvents bounds every Event value: arrays indexed by Event have this
// length.
const NumEvents = 2*NumCounters + 1

var eventNames = [NumEvents]string{
	"",
	"llc_references", "llc_misses", "l1d_misses", "bus_locks", "split_locks", "instructions", "cycles",
	"sample.llc_references", "sample.llc_misses", "sample.l1d_misses", "sample.bus_locks",
	"sample.split_locks", "sample.instructions", "sample.cycles",
}

// String returns the name used in traces, e.g. "llc_misses" or
// "sample.bus_locks".
func (e Event) String() string {
	if int(e) < len(eventNames) {
		return eventNames[e]
	}
	return "invalid"
}

// Valid reports whether e names a counter or a sample.
func (e Event) Valid() bool { return e > EventNone && e < NumEvents }

// IsSample reports whether e is a sample event.
func (e Event) IsSample() bool { return e > NumCounters && e < NumEvents }

// Counter returns the counter a sample event samples, or e itself for a
// counter event.
func (e Event) Counter() Event {
	if e.IsSample() {
		return e - NumCounters
	}
	return e
}

// Sample returns the sample event of counter c.
func (e Event) Sample() Event {
	if e > EventNone && e <= NumCounters {
		return e + NumCounters
	}
	return e
}

// ParseEvent maps an event name to its Event without allocating.
func ParseEvent(b []byte) (Event, bool) {
	for e := Event(1); e < NumEvents; e++ {
		if string(b) == eventNames[e] {
			return e, true
		}
	}
	return EventNone, false
}

// CounterByName maps a counter name (no "sample." prefix) to its Event.
func CounterByName(name string) (Event, bool) {
	for e := Event(1); e <= NumCounters; e++ {
		if name == eventNames[e] {
			return e, true
		}
	}
	return EventNone, false
}
