# ruff: noqa: DJ001 - the scenario's text columns are nullable; the models say so
"""Django 5 models of the support desk: only the columns a support_agent may read.

``managed = False``: the tables exist already (``accessguard scenario load DSN``).
"""

from __future__ import annotations

from django.db import models


class Customer(models.Model):
    id = models.BigIntegerField(primary_key=True)
    name = models.TextField(null=True)
    email = models.TextField(null=True)
    phone = models.TextField(null=True)
    address = models.TextField(null=True)

    class Meta:
        managed = False
        db_table = "customers"

    def __str__(self) -> str:
        return f"customer {self.id}"


class Order(models.Model):
    id = models.BigIntegerField(primary_key=True)
    customer = models.ForeignKey(Customer, models.DO_NOTHING, related_name="orders")
    status = models.TextField(null=True)
    total_cents = models.BigIntegerField(null=True)
    created_at = models.DateTimeField(null=True)

    class Meta:
        managed = False
        db_table = "orders"

    def __str__(self) -> str:
        return f"order {self.id}"


class Payment(models.Model):
    id = models.BigIntegerField(primary_key=True)
    order = models.ForeignKey(Order, models.DO_NOTHING, related_name="payments")
    customer = models.ForeignKey(Customer, models.DO_NOTHING, related_name="payments")
    amount_cents = models.BigIntegerField(null=True)
    card_last4 = models.TextField(null=True)

    class Meta:
        managed = False
        db_table = "payments"

    def __str__(self) -> str:
        return f"payment {self.id}"
