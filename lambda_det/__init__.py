"""lambda_det: LambdaNetworks (Bello, ICLR 2021) backbones for Detectron2.

``import lambda_det`` registers the LambdaResNet backbones in Detectron2's ``BACKBONE_REGISTRY``
and the embedded toy dataset in its ``DatasetCatalog``; importing it again is harmless.
"""
__version__ = "0.1.0"
