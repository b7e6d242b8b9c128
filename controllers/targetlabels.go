package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
)

// writeMemory is how long the labeler trusts its own write over a cache
// that does not show it yet.
const writeMemory = 10 * time.Second

// labelWorkers bounds the parallel node patches of one pass.
const labelWorkers = 8

// TargetLabeler keeps the migration-target label on every node: "allowed"
// or "excluded" (v1alpha1.LabelMigrationTarget). Sidewatch migrations select
// "allowed" through spec.addedNodeSelector, which only matches labels by
// equality; a node without the label can therefore never receive a victim,
// so the labeler labels every node before a migration is created, and
// removes the label from every node when sidewatch has no migration work
// left (see MigrationTargetReconciler).
type TargetLabeler struct {
	client client.Client
	clock  clock.PassiveClock

	mu         sync.Mutex
	written    map[string]labelWrite
	lastEnsure time.Time
}

type labelWrite struct {
	value string // "" means removed
	at    time.Time
}

// NewTargetLabeler returns a labeler that reads nodes through c (the cache)
// and patches them through it.
func NewTargetLabeler(c client.Client, clk clock.PassiveClock) *TargetLabeler {
	return &TargetLabeler{client: c, clock: clk, written: map[string]labelWrite{}}
}

// TargetNode is a node as the labeler left it.
type TargetNode struct {
	Node    *corev1.Node
	Allowed bool
}

// Ensure labels every node: excluded ones "excluded", all others "allowed".
// It returns every node with its verdict. Concurrent callers are
// serialised, so the labels never mix two exclusion sets.
func (l *TargetLabeler) Ensure(ctx context.Context, excluded map[string]exclusion) ([]TargetNode, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	l.lastEnsure = now
	var nodes corev1.NodeList
	if err := l.client.List(ctx, &nodes); err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	out := make([]TargetNode, 0, len(nodes.Items))
	var todo []pendingLabel
	for i := range nodes.Items {
		n := &nodes.Items[i]
		_, ex := excluded[n.Name]
		want := v1alpha1.MigrationTargetAllowed
		if ex {
			want = v1alpha1.MigrationTargetExcluded
		}
		out = append(out, TargetNode{Node: n, Allowed: !ex})
		if l.current(n, now) != want {
			todo = append(todo, pendingLabel{node: n.Name, value: want})
		}
	}
	return out, l.apply(ctx, todo, now)
}

// Cleanup removes the label from every node that carries it.
func (l *TargetLabeler) Cleanup(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	var nodes corev1.NodeList
	if err := l.client.List(ctx, &nodes); err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	var todo []pendingLabel
	for i := range nodes.Items {
		if l.current(&nodes.Items[i], now) != "" {
			todo = append(todo, pendingLabel{node: nodes.Items[i].Name})
		}
	}
	return l.apply(ctx, todo, now)
}

// LastEnsure is when Ensure last ran.
func (l *TargetLabeler) LastEnsure() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lastEnsure
}

// current is the label's value on the node: what the cache shows, unless
// we wrote something else moments ago that the cache has not caught up
// with. Caller holds l.mu.
func (l *TargetLabeler) current(n *corev1.Node, now time.Time) string {
	have := n.Labels[v1alpha1.LabelMigrationTarget]
	if w, ok := l.written[n.Name]; ok {
		if w.value == have || now.Sub(w.at) > writeMemory {
			delete(l.written, n.Name)
		} else {
			return w.value
		}
	}
	return have
}

type pendingLabel struct {
	node  string
	value string // "" removes the label
}

// apply patches the nodes in parallel. A JSON merge patch of one label
// touches nothing else and needs no resourceVersion, so it never conflicts
// with the kubelet's status updates. Caller holds l.mu.
func (l *TargetLabeler) apply(ctx context.Context, todo []pendingLabel, now time.Time) error {
	if len(todo) == 0 {
		return nil
	}
	var wmu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(labelWorkers)
	for _, p := range todo {
		g.Go(func() error {
			var value any
			if p.value != "" {
				value = p.value
			}
			body, err := json.Marshal(map[string]any{"metadata": map[string]any{"labels": map[string]any{v1alpha1.LabelMigrationTarget: value}}})
			if err != nil {
				return err
			}
			node := &corev1.Node{}
			node.Name = p.node
			if err := l.client.Patch(gctx, node, client.RawPatch(types.MergePatchType, body)); err != nil {
				if apierrors.IsNotFound(err) {
					return nil
				}
				return fmt.Errorf("label node %s %s=%q: %w", p.node, v1alpha1.LabelMigrationTarget, p.value, err)
			}
			wmu.Lock()
			l.written[p.node] = labelWrite{value: p.value, at: now}
			wmu.Unlock()
			return nil
		})
	}
	return g.Wait()
}
