package discovery

import (
	"context"
	"errors"
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	kubevirtv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
)

// Scheme returns the types the agent reads and writes.
func Scheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		clientgoscheme.AddToScheme, v1alpha1.AddToScheme, kubevirtv1.AddToScheme,
	} {
		if err := add(s); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Watcher follows, through the API server, the VMIs on one node, the
// SideChannelPolicies and the namespaces' labels (for policies'
// namespaceSelector). It reads from informer caches; Changed is signalled
// on every change so the agent re-reads only then.
type Watcher struct {
	node    string
	cache   cache.Cache
	changed chan struct{}
}

// NewWatcher prepares the informers. Like virt-handler, it lists only the
// VMIs labelled kubevirt.io/nodeName=<node>, so a node's agent never
// holds the whole cluster's VMIs; status.nodeName is checked as well.
func NewWatcher(cfg *rest.Config, scheme *runtime.Scheme, node string) (*Watcher, error) {
	if node == "" {
		return nil, errors.New("discovery: node name is empty: set NODE_NAME from the downward API (spec.nodeName) or --node-name")
	}
	c, err := cache.New(cfg, cache.Options{
		Scheme: scheme,
		ByObject: map[client.Object]cache.ByObject{
			&kubevirtv1.VirtualMachineInstance{}: {
				Label: labels.SelectorFromSet(labels.Set{kubevirtv1.NodeNameLabel: node}),
			},
		},
		DefaultTransform: cache.TransformStripManagedFields(),
	})
	if err != nil {
		return nil, fmt.Errorf("discovery: informer cache: %w", err)
	}
	return &Watcher{node: node, cache: c, changed: make(chan struct{}, 1)}, nil
}

// Start runs the informers until ctx ends and waits for their first sync.
func (w *Watcher) Start(ctx context.Context) error {
	for _, obj := range []client.Object{
		&kubevirtv1.VirtualMachineInstance{}, &v1alpha1.SideChannelPolicy{}, &corev1.Namespace{},
	} {
		inf, err := w.cache.GetInformer(ctx, obj)
		if err != nil {
			return fmt.Errorf("discovery: informer for %T: %w", obj, err)
		}
		if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
			AddFunc:    func(any) { w.notify() },
			UpdateFunc: func(any, any) { w.notify() },
			DeleteFunc: func(any) { w.notify() },
		}); err != nil {
			return fmt.Errorf("discovery: watch %T: %w", obj, err)
		}
	}
	errc := make(chan error, 1)
	go func() { errc <- w.cache.Start(ctx) }()
	if !w.cache.WaitForCacheSync(ctx) {
		select {
		case err := <-errc:
			return fmt.Errorf("discovery: informers: %w", err)
		default:
			return fmt.Errorf("discovery: informers did not sync: %w", ctx.Err())
		}
	}
	w.notify()
	return nil
}

func (w *Watcher) notify() {
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

// Changed receives after any watched object changed.
func (w *Watcher) Changed() <-chan struct{} { return w.changed }

// VMIs lists the VMIs running on this node, sorted by namespace/name.
func (w *Watcher) VMIs(ctx context.Context) ([]VMI, error) {
	var list kubevirtv1.VirtualMachineInstanceList
	if err := w.cache.List(ctx, &list); err != nil {
		return nil, fmt.Errorf("discovery: list VMIs: %w", err)
	}
	out := make([]VMI, 0, len(list.Items))
	for i := range list.Items {
		if v, ok := NodeVMI(&list.Items[i], w.node); ok {
			out = append(out, v)
		}
	}
	slices.SortFunc(out, func(a, b VMI) int { return compareRefs(a.Ref, b.Ref) })
	return out, nil
}

// Policies lists the SideChannelPolicies with schema defaults applied.
func (w *Watcher) Policies(ctx context.Context) ([]v1alpha1.SideChannelPolicy, error) {
	var list v1alpha1.SideChannelPolicyList
	if err := w.cache.List(ctx, &list); err != nil {
		return nil, fmt.Errorf("discovery: list SideChannelPolicies: %w", err)
	}
	for i := range list.Items {
		list.Items[i].Spec.Default()
	}
	return list.Items, nil
}

// NamespaceLabels returns every namespace's labels.
func (w *Watcher) NamespaceLabels(ctx context.Context) (map[string]map[string]string, error) {
	var list corev1.NamespaceList
	if err := w.cache.List(ctx, &list); err != nil {
		return nil, fmt.Errorf("discovery: list namespaces: %w", err)
	}
	out := make(map[string]map[string]string, len(list.Items))
	for _, ns := range list.Items {
		out[ns.Name] = ns.Labels
	}
	return out, nil
}

func compareRefs(a, b VMIRef) int {
	if a.Namespace != b.Namespace {
		if a.Namespace < b.Namespace {
			return -1
		}
		return 1
	}
	switch {
	case a.Name < b.Name:
		return -1
	case a.Name > b.Name:
		return 1
	}
	return 0
}
