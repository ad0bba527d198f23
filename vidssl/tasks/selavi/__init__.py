"""SeLaVi: labelling unlabelled videos by audio-visual self-labelling with optimal transport.

Asano, Patrick, Rupprecht & Vedaldi, "Labelling unlabelled videos from scratch with multi-modal
self-supervision", NeurIPS 2020; built on SeLa (Asano et al., ICLR 2020).

The method, in the order it runs (the default computation is the authors' code's; docs/methods/selavi.md
lists what differs):

1. A video encoder and an audio encoder (log-mel) pool their features; each modality has one head per
   clustering (``num_clusters``: K of each head), an MLP to K logits (`heads.cluster_head`).
2. Before training and then on a power-1.5 schedule (`labelling.relabel_steps`), every clip of the
   training dataset is passed through the network in eval mode (`relabel.dataset_features`; batch-norm
   statistics are warmed up before the first pass).
3. The first time, each audio head's clusters are permuted to match the video head's
   (`labelling.alignment`), since the two heads number their clusters independently.
4. Per head, the clip-to-cluster assignment that best agrees with the product of the two modalities'
   predictions under equal cluster sizes (or a Gaussian marginal) is found by Sinkhorn-Knopp run to
   convergence (`labelling.assign`); its argmax is each clip's label, kept in a table
   (`state.LabelTable`) and shared by audio and video.
5. Each training step trains every head of both modalities with cross-entropy to the labels of its clips.

``labels="online"`` replaces 2-4 with SwAV-style codes computed every step from the batch (plus a queue
of recent clips, `state.FeatureQueue`) with a fixed number of Sinkhorn iterations. ``audio_encoder=None``
is the single-modality SeLa variant. Under DDP each rank passes its shard of the dataset; Sinkhorn and
the alignment all-reduce only sums (nothing N×K is gathered), and the label tables are merged with one
all-reduce of H×N integers.

Files: `model` (the task), `heads`, `labelling` (marginal, Sinkhorn, alignment, schedule), `relabel`
(the pass over the dataset), `state` (label table, queue).
"""

from vidssl.tasks.selavi.model import SeLaVi

__all__ = ["SeLaVi"]
