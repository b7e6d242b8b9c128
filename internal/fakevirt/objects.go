package fakevirt

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	virtv1 "kubevirt.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// NewNode returns a Ready, schedulable worker node with the given labels
// (plus kubernetes.io/hostname).
func NewNode(name string, labels map[string]string) *corev1.Node {
	l := map[string]string{corev1.LabelHostname: name}
	for k, v := range labels {
		l[k] = v
	}
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: l},
		Status: corev1.NodeStatus{
			Conditions: []corev1.NodeCondition{{
				Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
				Message: "kubelet is posting ready status", LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now(),
			}},
		},
	}
}

// CreateNode creates node and then its status (a Node's status is a
// subresource, so Create alone drops it).
func CreateNode(ctx context.Context, c client.Client, node *corev1.Node) error {
	status := node.Status.DeepCopy()
	if err := c.Create(ctx, node); err != nil {
		return fmt.Errorf("create node %s: %w", node.Name, err)
	}
	// A merge patch without a resourceVersion: controllers may already be
	// labelling the new node.
	before := node.DeepCopy()
	node.Status = *status
	if err := c.Status().Patch(ctx, node, client.MergeFrom(before)); err != nil {
		return fmt.Errorf("set status of node %s: %w", node.Name, err)
	}
	return nil
}

// NewVMI returns a VMI running on node, Ready and live-migratable, the way
// KubeVirt reports a healthy running VMI.
func NewVMI(namespace, name, node string, labels map[string]string) *virtv1.VirtualMachineInstance {
	l := map[string]string{virtv1.NodeNameLabel: node}
	for k, v := range labels {
		l[k] = v
	}
	now := metav1.Now()
	return &virtv1.VirtualMachineInstance{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: l},
		Spec: virtv1.VirtualMachineInstanceSpec{
			Domain: virtv1.DomainSpec{Devices: virtv1.Devices{}},
		},
		Status: virtv1.VirtualMachineInstanceStatus{
			Phase:    virtv1.Running,
			NodeName: node,
			Conditions: []virtv1.VirtualMachineInstanceCondition{
				{Type: virtv1.VirtualMachineInstanceReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
				{Type: virtv1.VirtualMachineInstanceIsMigratable, Status: corev1.ConditionTrue, LastTransitionTime: now},
			},
			PhaseTransitionTimestamps: []virtv1.VirtualMachineInstancePhaseTransitionTimestamp{
				{Phase: virtv1.Running, PhaseTransitionTimestamp: now},
			},
		},
	}
}

// CreateVMI creates vmi with its status. KubeVirt's VMI CRD has no status
// subresource, so one Create stores both.
func CreateVMI(ctx context.Context, c client.Client, vmi *virtv1.VirtualMachineInstance) error {
	status := vmi.Status.DeepCopy()
	if err := c.Create(ctx, vmi); err != nil {
		return fmt.Errorf("create VMI %s/%s: %w", vmi.Namespace, vmi.Name, err)
	}
	if vmi.Status.Phase == "" && status.Phase != "" {
		return fmt.Errorf("create VMI %s/%s: the API server dropped its status; is the VMI CRD installed with a status subresource?", vmi.Namespace, vmi.Name)
	}
	return nil
}

// SetLiveMigratable sets the VMI's LiveMigratable condition, as virt-handler
// does when it learns whether the VMI can move (a non-shared disk, a host
// device, ... make it False).
func SetLiveMigratable(ctx context.Context, c client.Client, key types.NamespacedName, migratable bool, reason, message string) error {
	vmi := &virtv1.VirtualMachineInstance{}
	if err := c.Get(ctx, key, vmi); err != nil {
		return err
	}
	before := vmi.DeepCopy()
	status := corev1.ConditionTrue
	if !migratable {
		status = corev1.ConditionFalse
	}
	cond := virtv1.VirtualMachineInstanceCondition{
		Type: virtv1.VirtualMachineInstanceIsMigratable, Status: status,
		Reason: reason, Message: message, LastTransitionTime: metav1.Now(),
	}
	replaced := false
	for i := range vmi.Status.Conditions {
		if vmi.Status.Conditions[i].Type == cond.Type {
			vmi.Status.Conditions[i] = cond
			replaced = true
		}
	}
	if !replaced {
		vmi.Status.Conditions = append(vmi.Status.Conditions, cond)
	}
	return c.Patch(ctx, vmi, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}))
}
