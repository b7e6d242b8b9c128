package controllers

import (
	"sync"
	"time"

	virtv1 "kubevirt.io/api/core/v1"
)

// reservationTTL bounds how long a reservation outlives a create whose
// object the cache never shows (the create failed in a way we did not see,
// or the object was deleted at once).
const reservationTTL = time.Minute

// migrationGate serialises the decision to start a migration, so that
// concurrent reconciles respect the cluster-wide cap and never start two
// migrations of one VMI. Between a create and the moment the cache shows the
// new object, the reservation stands in for it (KubeVirt's "expectations").
type migrationGate struct {
	mu       sync.Mutex
	reserved map[string]reservation // by namespace/name of the migration
}

type reservation struct {
	victim  string // namespace/name of the VMI
	finding string // name of the finding that reserved
	at      time.Time
}

func newMigrationGate() *migrationGate {
	return &migrationGate{reserved: map[string]reservation{}}
}

// gateVerdict is the outcome of a reservation attempt.
type gateVerdict struct {
	// OK: the caller may create the migration, and must Release it if the
	// create fails.
	OK bool
	// InFlight counts sidewatch migrations in flight, this one excluded.
	InFlight int
	// Busy names the migration that already moves the victim.
	Busy string
}

// Reserve admits the migration name of victim when fewer than limit
// sidewatch migrations are in flight and none moves the victim. list
// returns the unfinished sidewatch migrations the cache shows (any
// namespace); it is called under the gate's lock, so that no migration can
// slip between the list and the reservations (its reservation forgotten by
// Observed after this list was taken).
func (g *migrationGate) Reserve(now time.Time, name, victim, finding string, limit int, list func() ([]virtv1.VirtualMachineInstanceMigration, error)) (gateVerdict, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	inflight, err := list()
	if err != nil {
		return gateVerdict{}, err
	}
	seen := map[string]bool{}
	v := gateVerdict{}
	for i := range inflight {
		m := &inflight[i]
		key := m.Namespace + "/" + m.Name
		seen[key] = true
		if key == name {
			continue
		}
		v.InFlight++
		if m.Namespace+"/"+m.Spec.VMIName == victim && v.Busy == "" {
			v.Busy = key
		}
	}
	for key, r := range g.reserved {
		if seen[key] || now.Sub(r.at) > reservationTTL {
			// The cache shows it now, or it never came: forget it.
			delete(g.reserved, key)
			continue
		}
		if key == name {
			continue
		}
		v.InFlight++
		if r.victim == victim && v.Busy == "" {
			v.Busy = key
		}
	}
	if v.Busy != "" || v.InFlight >= limit {
		return v, nil
	}
	g.reserved[name] = reservation{victim: victim, finding: finding, at: now}
	v.OK = true
	return v, nil
}

// Observed forgets the reservation of a migration the cache now shows
// (KubeVirt's CreationObserved).
func (g *migrationGate) Observed(name string) { g.Release(name) }

// Release forgets a reservation whose create failed.
func (g *migrationGate) Release(name string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.reserved, name)
}

// ReservedFor returns a live reservation for victim (namespace/name) other
// than the migration except: the migration's and the finding's names.
func (g *migrationGate) ReservedFor(victim, except string, now time.Time) (migration, finding string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for key, r := range g.reserved {
		if key != except && r.victim == victim && now.Sub(r.at) <= reservationTTL {
			return key, r.finding
		}
	}
	return "", ""
}
