package tracegen

// AttackKind names an attack scenario.
type AttackKind string

// Attack kinds.
const (
	CacheCovert   AttackKind = "cache-covert"
	BusLockCovert AttackKind = "buslock-covert"
	PrimeProbe    AttackKind = "prime-probe"
	FlushReload   AttackKind = "flush-reload"
)

// cacheSender evicts the receiver's lines in the slots its bits say.
type cacheSender struct {
	ch    *channel
	rate  float64 // LLC misses per second while active
	cover workload
}

func (w *cacheSender) at(t float64) load {
	if t < w.ch.onset {
		return w.cover.at(t)
	}
	lvl := w.ch.level(t)
	bg := w.cover.at(t)
	bg.busy = 0.1 + 0.9*lvl + 0.3*bg.busy
	bg.missRate = w.rate * lvl
	bg.refRate = 1.1 * w.rate * lvl
	return bg
}

// cacheReceiver probes its lines continuously; it misses when the sender
// evicted them, lag seconds after the sender's activity.
type cacheReceiver struct {
	ch    *channel
	rate  float64
	lag   float64
	probe float64 // references per second of the probe loop
	cover workload
}

func (w *cacheReceiver) at(t float64) load {
	if t < w.ch.onset {
		return w.cover.at(t)
	}
	return load{busy: 1, ipc: 1.2, mpki: 0.3, rpki: 2, l1pki: 10, missRate: 2e4 + w.rate*w.ch.level(t-w.lag), refRate: w.probe, memSens: 0.2, memBound: 0.6}
}

// lockSender takes split locks in the slots its bits say.
type lockSender struct {
	ch    *channel
	rate  float64
	cover workload
}

func (w *lockSender) at(t float64) load {
	if t < w.ch.onset {
		return w.cover.at(t)
	}
	lvl := w.ch.level(t)
	l := w.cover.at(t)
	l.busy = 0.1 + 0.9*lvl + 0.3*l.busy
	l.locks = w.rate * lvl
	return l
}

// lockReceiver times memory accesses in a tight loop: every bus lock on
// the node stalls it.
type lockReceiver struct {
	onset float64
	cover workload
}

func (w *lockReceiver) at(t float64) load {
	if t < w.onset {
		return w.cover.at(t)
	}
	return load{busy: 1, ipc: 1.5, mpki: 4, rpki: 20, l1pki: 30, memSens: 0.3, memBound: 1}
}

// sideAttacker probes the victim's cache sets (Prime+Probe: more misses
// while the victim's crypto evicts them) or reloads shared lines
// (Flush+Reload: fewer misses while the victim touches them).
type sideAttacker struct {
	victim *cryptoService
	onset  float64
	mpki   float64
	factor float64
	cover  workload
}

func (w *sideAttacker) at(t float64) load {
	if t < w.onset {
		return w.cover.at(t)
	}
	m, ipc := w.mpki, 0.5
	if w.victim.sensitive(t) {
		m *= w.factor
		if w.factor < 1 {
			ipc *= 1.3
		} else {
			ipc /= 1.2
		}
	}
	return load{busy: 1, ipc: ipc, mpki: m, rpki: m * 1.1, l1pki: 30, memSens: 0.1, memBound: 0.5}
}
