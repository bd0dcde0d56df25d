/* The model zoo: every name `hakd models` lists. Prefixes follow the reference state_dicts:
 * torchvision segmentation models (backbone.*, classifier.*, aux_classifier.*), Hugging Face
 * SegformerForSemanticSegmentation (segformer.encoder.*, decode_head.*), mmsegmentation's PSPHead
 * (decode_head.*); the -mmseg models are mmsegmentation's own module structures (ResNetV1c +
 * ASPPHead, MiT + SegformerHead) under backbone.* / decode_head.* (auxiliary_head.* maps onto
 * aux_classifier.*). No ResNet-18/34 -mmseg model: mmseg's BasicBlock dilates only its first 3x3
 * conv, hakd's (as CIRKD's) both. */
#include <string.h>

#include "models/model_internal.h"

static const model_spec specs[] = {
    {"segformer-b0", "SegFormer-B0: MiT-B0 encoder + all-MLP decoder (256), HF names", BACKBONE_MIT, 0, 32,
     HEAD_SEGFORMER, 0, "segformer.encoder", "decode_head", 0, 0},
    {"segformer-b1", "SegFormer-B1: MiT-B1 + all-MLP decoder (256)", BACKBONE_MIT, 1, 32, HEAD_SEGFORMER, 0,
     "segformer.encoder", "decode_head", 0, 0},
    {"segformer-b2", "SegFormer-B2: MiT-B2 + all-MLP decoder (768)", BACKBONE_MIT, 2, 32, HEAD_SEGFORMER, 0,
     "segformer.encoder", "decode_head", 0, 0},
    {"segformer-b3", "SegFormer-B3: MiT-B3 + all-MLP decoder (768)", BACKBONE_MIT, 3, 32, HEAD_SEGFORMER, 0,
     "segformer.encoder", "decode_head", 0, 0},
    {"segformer-b4", "SegFormer-B4: MiT-B4 + all-MLP decoder (768)", BACKBONE_MIT, 4, 32, HEAD_SEGFORMER, 0,
     "segformer.encoder", "decode_head", 0, 0},
    {"segformer-b5", "SegFormer-B5: MiT-B5 + all-MLP decoder (768)", BACKBONE_MIT, 5, 32, HEAD_SEGFORMER, 0,
     "segformer.encoder", "decode_head", 0, 0},
    {"deeplabv3-r18-d8", "DeepLabV3 (ASPP 12/24/36, --aspp-dilations) on dilated ResNet-18, output stride 8 (the classic student)",
     BACKBONE_RESNET, 18, 8, HEAD_ASPP, 0, "backbone", "classifier", 0, 0},
    {"deeplabv3-r34-d8", "DeepLabV3 on dilated ResNet-34, output stride 8", BACKBONE_RESNET, 34, 8, HEAD_ASPP, 0,
     "backbone", "classifier", 0, 0},
    {"deeplabv3-r50-d8", "DeepLabV3 on dilated ResNet-50, output stride 8 (torchvision deeplabv3_resnet50 names)",
     BACKBONE_RESNET, 50, 8, HEAD_ASPP, 0, "backbone", "classifier", 0, 0},
    {"deeplabv3-r101-d8", "DeepLabV3 on dilated ResNet-101, output stride 8", BACKBONE_RESNET, 101, 8, HEAD_ASPP, 0,
     "backbone", "classifier", 0, 0},
    {"deeplabv3-r18-d16", "DeepLabV3 on ResNet-18, output stride 16", BACKBONE_RESNET, 18, 16, HEAD_ASPP, 0,
     "backbone", "classifier", 0, 0},
    {"deeplabv3-r50-d16", "DeepLabV3 on ResNet-50, output stride 16", BACKBONE_RESNET, 50, 16, HEAD_ASPP, 0,
     "backbone", "classifier", 0, 0},
    {"deeplabv3-r101-d16", "DeepLabV3 on ResNet-101, output stride 16", BACKBONE_RESNET, 101, 16, HEAD_ASPP, 0,
     "backbone", "classifier", 0, 0},
    {"deeplabv3-mbv2", "DeepLabV3 on MobileNetV2 dilated to output stride 8 (torchvision names)",
     BACKBONE_MOBILENETV2, 0, 8, HEAD_ASPP, 0, "backbone.features", "classifier", 0, 0},
    {"deeplabv3-mit-b0", "DeepLabV3 (ASPP) on a MiT-B0 encoder", BACKBONE_MIT, 0, 32, HEAD_ASPP, 0, "backbone",
     "classifier", 0, 0},
    {"deeplabv3-mit-b4", "DeepLabV3 (ASPP) on a MiT-B4 encoder (the paper's Transformer teacher)", BACKBONE_MIT, 4,
     32, HEAD_ASPP, 0, "backbone", "classifier", 0, 0},
    {"pspnet-r18-d8", "PSPNet (pyramid pooling bins 1,2,3,6) on dilated ResNet-18", BACKBONE_RESNET, 18, 8, HEAD_PSP, 0,
     "backbone", "decode_head", 0, 0},
    {"pspnet-r50-d8", "PSPNet on dilated ResNet-50", BACKBONE_RESNET, 50, 8, HEAD_PSP, 0, "backbone", "decode_head", 0, 0},
    {"pspnet-r101-d8", "PSPNet on dilated ResNet-101", BACKBONE_RESNET, 101, 8, HEAD_PSP, 0, "backbone",
     "decode_head", 0, 0},
    {"fcn-r50-d8", "FCN on dilated ResNet-50 (torchvision fcn_resnet50 names)", BACKBONE_RESNET, 50, 8, HEAD_FCN, 0,
     "backbone", "classifier", 0, 0},
    {"fcn-r101-d8", "FCN on dilated ResNet-101", BACKBONE_RESNET, 101, 8, HEAD_FCN, 0, "backbone", "classifier", 0, 0},
    {"deeplabv3-r50-d8-mmseg", "mmsegmentation DeepLabV3 (ASPPHead 1,12,24,36, 512 ch) on ResNetV1c-50, output stride 8",
     BACKBONE_RESNET, 50, 8, HEAD_ASPP_MMSEG, 0, "backbone", "decode_head", 1, 512},
    {"deeplabv3-r101-d8-mmseg", "mmsegmentation DeepLabV3 (ASPPHead, 512 ch) on ResNetV1c-101, output stride 8",
     BACKBONE_RESNET, 101, 8, HEAD_ASPP_MMSEG, 0, "backbone", "decode_head", 1, 512},
    {"segformer-b0-mmseg", "mmsegmentation SegFormer-B0: MiT-B0 + SegformerHead (ConvModules, 256)", BACKBONE_MIT, 0,
     32, HEAD_SEGFORMER_MMSEG, 0, "backbone", "decode_head", 0, 0},
    {"segformer-b1-mmseg", "mmsegmentation SegFormer-B1 (SegformerHead, 256)", BACKBONE_MIT, 1, 32,
     HEAD_SEGFORMER_MMSEG, 0, "backbone", "decode_head", 0, 0},
    {"segformer-b2-mmseg", "mmsegmentation SegFormer-B2 (SegformerHead, 768)", BACKBONE_MIT, 2, 32,
     HEAD_SEGFORMER_MMSEG, 0, "backbone", "decode_head", 0, 0},
    {"segformer-b3-mmseg", "mmsegmentation SegFormer-B3 (SegformerHead, 768)", BACKBONE_MIT, 3, 32,
     HEAD_SEGFORMER_MMSEG, 0, "backbone", "decode_head", 0, 0},
    {"segformer-b4-mmseg", "mmsegmentation SegFormer-B4 (SegformerHead, 768)", BACKBONE_MIT, 4, 32,
     HEAD_SEGFORMER_MMSEG, 0, "backbone", "decode_head", 0, 0},
    {"segformer-b5-mmseg", "mmsegmentation SegFormer-B5 (SegformerHead, 768)", BACKBONE_MIT, 5, 32,
     HEAD_SEGFORMER_MMSEG, 0, "backbone", "decode_head", 0, 0},
};

int model_spec_count(void) { return (int)(sizeof specs / sizeof specs[0]); }
const model_spec *model_spec_at(int i) { return &specs[i]; }

const model_spec *model_spec_find(const char *name) {
  for (int i = 0; i < model_spec_count(); i++)
    if (!strcmp(specs[i].name, name)) return &specs[i];
  return NULL;
}
